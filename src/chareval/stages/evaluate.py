"""stage=evaluate: every conversation x evaluator x judge model x sample -> evaluations.jsonl,
summary.json and judge metrics. Exceeding the error budget fails the stage after writing it all."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from chareval.config import AppConfig
from chareval.errors import ModelError
from chareval.evaluators.base import Evaluator
from chareval.evaluators.registry import build
from chareval.evaluators.summary import metrics, summarize
from chareval.io import (
    JsonlAppender,
    finished_ids,
    latest_by_id,
    read_records_jsonl,
    write_text_atomic,
)
from chareval.llm import ChatMessage, derive_seed
from chareval.schemas import Conversation, Evaluation
from chareval.stages.base import (
    STAGES,
    InputSpec,
    Stage,
    StageContext,
    StageResult,
    error_budget,
    progress,
    read_conversations,
)
from chareval.stages.breach import breach_outputs
from chareval.stages.parallel import run_parallel
from chareval.stages.prompts import with_characters
from chareval.store import names, trace_repair
from chareval.store.assets import use_prompts
from chareval.store.traces import Unit

log = logging.getLogger(__name__)


def evaluation_id(conversation_id: str, evaluator: str, judge: str, sample: int) -> str:
    return f"{conversation_id}|{evaluator}|{judge}|{sample}"


def judge_one(
    ctx: StageContext,
    conversation: Conversation,
    evaluator: Evaluator,
    judge: str,
    sample: int,
    feedback: bool = True,
    judgments: Unit | None = None,
) -> Evaluation:
    """One judgment, a span of the trace of its conversation's `judgments`; with `feedback`, its
    verdict is also attached to the judged conversation's trace (LLM_JUDGE feedback), so the MLflow
    UI shows the two together."""
    with ctx.tracer.unit(
        f"{evaluator.name} · {judge} · sample {sample}",
        "judgment",
        {"conversation": conversation.id, "evaluator": evaluator.name, "judge": judge, "sample": sample},
        parent=judgments,
    ) as trace:
        record = ask_judge(ctx, conversation, evaluator, judge, sample)
        trace.finish(record.model_dump(include={"score", "passed", "rationale", "evidence_turns", "details", "error"}))
    if feedback and conversation.trace_id:
        ctx.tracer.feedback(
            conversation.trace_id,
            evaluator.name,
            source=("LLM_JUDGE", record.answered_model or judge),
            value=record.score,
            rationale=record.rationale,
            metadata={
                "passed": record.passed,
                "evidence_turns": record.evidence_turns,
                **record.details,  # e.g. boundary_holding's slip_turn
                "sample": record.sample,
                "seed": record.seed,
                "judge_model": judge,
                "evaluation_id": record.id,
                "judgments_trace": trace.trace_id,
            },
            error=record.error,
        )
    return record


def ask_judge(
    ctx: StageContext, conversation: Conversation, evaluator: Evaluator, judge: str, sample: int
) -> Evaluation:
    system, prompt = evaluator.prompt(conversation)
    seed = derive_seed(ctx.settings.seed, "judge", conversation.id, evaluator.name, judge, sample)
    record = {
        "id": evaluation_id(conversation.id, evaluator.name, judge, sample),
        "conversation_id": conversation.id,
        "context_id": conversation.context_id,
        "context_sha256": conversation.context_sha256,
        "evaluator": evaluator.name,
        "judge_model": judge,
        "sample": sample,
        "seed": seed,
    }
    try:
        response = ctx.client.ask(
            "judge",
            system,
            [ChatMessage(role="user", content=prompt)],
            seed=seed,
            schema=evaluator.schema(conversation),
            model=judge,
        )
    except ModelError as e:
        return Evaluation(**record, error=e.one_line(), raw_text=getattr(e, "raw_text", None))
    verdict = response.parsed.model_dump()
    common = {k: verdict.pop(k) for k in ("score", "rationale", "evidence_turns")}
    return Evaluation(
        **record,
        **common,
        passed=evaluator.passes(common["score"]),
        details=verdict,
        answered_model=response.model,
        usage=response.usage,
    )


def judge_all(
    ctx: StageContext,
    conversations: list[Conversation],
    evaluators: list[Evaluator],
    out: Path,
    feedback: bool = True,
) -> list[Evaluation]:
    """Judge every item not already valid in `out` (a rerun resumes), appending as each finishes;
    returns the latest record of every item. `feedback`: attach each verdict to its conversation's
    trace (not for a judge check, whose verdicts are about the judge)."""
    s = ctx.settings
    judges, samples = s.judges(), s.evaluation.judge_samples
    conversations = [with_characters(c, s.persona, s.user_persona) for c in conversations]  # fails before any call
    done = finished_ids(out, Evaluation)
    wanted = [
        (conv, ev, judge, k) for conv in conversations for ev in evaluators for judge in judges for k in range(samples)
    ]
    todo = [item for item in wanted if evaluation_id(item[0].id, item[1].name, item[2], item[3]) not in done]
    if out.exists():  # this folder was judged before: mend what a fault left of its traces
        repair_traces(ctx, todo, feedback)
    errors = []
    # The judgments of one conversation are one trace, written when its last judgment is done.
    left = Counter(conv.id for conv, *_ in todo)
    traces = {cid: judgments_trace(ctx, conv) for cid, conv in {c.id: c for c, *_ in todo}.items()}
    with JsonlAppender(out) as records:

        def finished(record: Evaluation) -> None:
            records.append(record)
            if record.error:
                errors.append(record.id)
            left[record.conversation_id] -= 1
            if not left[record.conversation_id]:
                traces[record.conversation_id].close()

        try:
            run_parallel(
                lambda conv, ev, judge, k: judge_one(
                    ctx, conv, ev, judge, k, feedback=feedback, judgments=traces[conv.id]
                ),
                todo,
                workers=ctx.client.parallelism(judges),
                desc="judgments",
                on_result=finished,
                postfix=lambda: progress(ctx, len(errors)),
            )
        finally:
            for trace in traces.values():  # those an interruption left open
                trace.close()
    ids = {evaluation_id(c.id, e.name, j, k) for c, e, j, k in wanted}
    return [r for r in latest_by_id(read_records_jsonl(out, Evaluation)) if r.id in ids] if out.exists() else []


def repair_traces(ctx: StageContext, todo: list[tuple], feedback: bool) -> None:
    """A resumed run (see trace_repair): the judgments traces a killed run left open are closed as
    errors, and the verdicts it attached without writing their records are taken off the
    conversations' traces (they are judged again now)."""
    run_id = ctx.tracer.run_id
    if run_id is None:
        return
    experiment = trace_repair.experiment_of(run_id)
    closed = trace_repair.close_interrupted(experiment, trace_repair.earlier_runs(ctx.run_dir, experiment, run_id))
    dropped = 0
    if feedback:
        redo = {evaluation_id(c.id, e.name, j, k) for c, e, j, k in todo}
        dropped = trace_repair.drop_feedback({c.trace_id for c, *_ in todo if c.trace_id}, redo)
    if closed or dropped:
        log.info(
            "tracing repaired: %d interrupted judgments trace(s) closed, %d verdict(s) to judge again", closed, dropped
        )


def judgments_trace(ctx: StageContext, conversation: Conversation) -> Unit:
    return ctx.tracer.open(
        f"judgments · {conversation.id}",
        "judgments",
        {"conversation": conversation.id, "conversation_trace": conversation.trace_id},
        tags={
            "conversation": conversation.id,
            "persona": conversation.assistant_persona,
            "user_persona": conversation.user_persona,
        },
    )


def write_rubrics(evaluators: list[Evaluator], folder: Path) -> Path:
    for ev in evaluators:
        write_text_atomic(folder / f"{ev.name}.md", f"# {ev.name}\n\n{ev.rubric}\n")
    return folder


def build_evaluators(settings: AppConfig, wanted: list[str]) -> list[Evaluator]:
    """The named evaluators, each with its rubric from the config."""
    evaluation = settings.evaluation
    return [build(name, evaluation.rubrics[name], evaluation.pass_threshold) for name in wanted]


def version_rubrics(ctx: StageContext, evaluators: list[Evaluator]) -> None:
    """Each rubric template (before the personas fill it) as a versioned prompt of the run."""
    use_prompts(ctx.mlflow, {f"rubric.{e.name}": (f"chareval.rubric.{e.name}", e.rubric) for e in evaluators})


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    conversations = read_conversations(inputs["conversations"])
    skip_errored = s.evaluation.skip_errored
    usable = [c for c in conversations if c.messages and not (c.error and skip_errored)]
    if len(usable) < len(conversations):
        log.warning(
            "not judging %d conversation(s) that ended in an error or are empty", len(conversations) - len(usable)
        )
    evaluators = build_evaluators(s, s.evaluation.evaluators)
    version_rubrics(ctx, evaluators)
    out = ctx.run_dir / names.EVALUATIONS
    records = judge_all(ctx, usable, evaluators, out)
    summary = summarize(records, [e.name for e in evaluators], s.judges())
    summary["conversations_skipped"] = len(conversations) - len(usable)
    summary_file = ctx.run_dir / names.SUMMARY
    write_text_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    ctx.mlflow.log_table(table(records), "evaluations_table.json")
    failure = error_budget(
        "judgments",
        [r.error for r in records if r.error],
        summary["n_records"],
        "evaluation.max_error_fraction",
        s.evaluation.max_error_fraction,
        ctx.run_dir,
    )
    breach = breach_outputs(ctx, usable, records)
    line = ", ".join(
        f"{name} {e['mean']:.1f}/10 pass {e['pass_rate']:.0%}"
        for name, e in summary["evaluators"].items()
        if e["mean"] is not None
    )
    return StageResult(
        outputs={
            "evaluations": out,
            "summary": summary_file,
            "rubrics": write_rubrics(evaluators, ctx.run_dir / "rubrics"),
        }
        | breach.files,
        metrics=metrics(summary)
        | {"evaluate.conversations_skipped": summary["conversations_skipped"]}
        | breach.metrics,
        summary=f"{summary['n_records']} judgments ({summary['n_errors']} errors): "
        f"{line or 'no valid judgment'}{breach.line} -> {summary_file}",
        failure=failure,
    )


def table(records: list[Evaluation]) -> dict[str, list]:
    """One row per judgment, for mlflow.log_table (the per-conversation view in the MLflow UI)."""
    columns = [
        "conversation_id",
        "context_id",
        "evaluator",
        "judge_model",
        "sample",
        "score",
        "passed",
        "rationale",
        "error",
    ]
    return {c: [getattr(r, c) for r in records] for c in columns}


STAGE = STAGES.register(
    "evaluate",
    Stage(
        run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.EVALUATIONS, names.SUMMARY, names.BREACH_CURVE, names.BREACH_PICTURE),
        judges=True,
    ),
)
