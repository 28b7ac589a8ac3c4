"""stage=repair: the slips made into teaching data. For each failing conversation with a slip turn
(boundary_holding's `slip_turn`, as prepare.select=until_slip places it), the teacher writes the
slipped assistant turn again, given the conversation up to that turn, the persona's boundaries and the
judge's rationale; the repaired prefix is judged again by the same evaluators. Kept repairs become a
preference pair (chosen = the repair, rejected = the slip) and an SFT example of the repaired prefix."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from chareval.config import RepairSettings
from chareval.errors import CharevalError, ConfigError, ModelError
from chareval.finetune.data_format import conversation_to_example, preference_example, validate_preference
from chareval.io import JsonlAppender, finished_ids, latest_by_id, read_records_jsonl, write_jsonl_atomic
from chareval.llm import derive_seed
from chareval.schemas import Conversation, Evaluation, Message, Repair, Usage
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
from chareval.stages.evaluate import ask_judge, build_evaluators
from chareval.stages.parallel import run_parallel
from chareval.stages.prompts import assistant_view, with_characters
from chareval.stages.selection import SLIP_EVALUATOR, verdicts
from chareval.store import names
from chareval.templates import fill

log = logging.getLogger(__name__)


def slips(conversations: list[Conversation], evaluations: list[Evaluation], threshold: int) -> list[tuple]:
    """(conversation, slip turn, the failing judgments' rationale) for each repairable conversation."""
    found = verdicts(evaluations, threshold)
    by_conversation = {c.id: c for c in conversations if c.error is None}
    work = []
    for cid, verdict in sorted(found.items()):
        slip = verdict.get(SLIP_EVALUATOR)
        conversation = by_conversation.get(cid)
        if conversation is None or slip is None or slip.passed or slip.slip_turn is None:
            continue
        turns = [m.turn for m in conversation.messages if m.role == "assistant"]
        if slip.slip_turn not in turns:
            continue
        rationale = " / ".join(
            e.rationale or ""
            for e in evaluations
            if e.conversation_id == cid and e.evaluator == SLIP_EVALUATOR and e.passed is False
        )
        work.append((conversation, slip.slip_turn, rationale, {n: v.mean for n, v in verdict.items()}))
    return work


def repair_one(
    ctx: StageContext, conversation: Conversation, turn: int, rationale: str, before: dict[str, float | None]
) -> Repair:
    s, knobs = ctx.settings, ctx.knobs("repair", RepairSettings)
    teacher = s.models.teacher_model()
    original = next(m for m in conversation.messages if m.turn == turn)
    record = Repair(
        id=conversation.id,
        conversation_id=conversation.id,
        turn=turn,
        original=original.content,
        teacher_model=teacher,
        before=before,
    )
    prefix = [m for m in conversation.messages if m.turn < turn]
    boundaries = "\n".join(f"- {b}" for b in s.persona.boundaries)
    system = conversation.assistant_system_prompt + fill(
        knobs.instructions, {"boundaries": boundaries, "rationale": rationale, "original": original.content}
    )
    with ctx.tracer.unit(
        f"repair · {conversation.id} · turn {turn}",
        "repair",
        {"conversation": conversation.id, "turn": turn, "original": original.content, "rationale": rationale},
        tags={"conversation": conversation.id, "persona": conversation.assistant_persona},
    ) as trace:
        try:
            response = ctx.client.ask(
                "assistant",
                system,
                assistant_view(conversation.opening_prompt, prefix),
                seed=derive_seed(s.seed, "repair", conversation.id, turn),
                model=teacher,
            )
            if not response.text.strip():
                raise ModelError(f"{response.model} returned an empty reply")
            repaired = conversation.model_copy(
                update={
                    "id": f"{conversation.id}~repaired",
                    "messages": [
                        *prefix,
                        Message(role="assistant", content=response.text, turn=turn, model=response.model),
                    ],
                    "turns": turn + 1,
                }
            )
            judged = rejudge(ctx, repaired, sorted(before))
        except ModelError as e:
            record = record.model_copy(update={"error": e.one_line()})
            trace.finish(record.model_dump(mode="json"), error=record.error)
            return record
        after = verdicts(judged, s.evaluation.pass_threshold).get(repaired.id, {})
        passed = bool(after) and all(v.passed for v in after.values()) and set(after) == set(before)
        record = record.model_copy(
            update={
                "repaired": response.text,
                "after": {n: v.mean for n, v in after.items()},
                "passed_after": passed,
                "kept": passed or knobs.keep == "all",
                "usage": response.usage + sum((j.usage for j in judged), Usage()),
            }
        )
        trace.finish(record.model_dump(mode="json"))
    return record


def rejudge(ctx: StageContext, repaired: Conversation, wanted: list[str]) -> list[Evaluation]:
    """The repaired prefix judged by the evaluators that judged the original, every judge and sample."""
    s = ctx.settings
    known = set(s.evaluation.rubrics)
    evaluators = build_evaluators(s, [n for n in wanted if n in known])
    conversation = with_characters(repaired, s.persona, s.user_persona)
    judged = [
        ask_judge(ctx, conversation, evaluator, judge, sample)
        for evaluator in evaluators
        for judge in s.judges()
        for sample in range(s.evaluation.judge_samples)
    ]
    failed = [j.error for j in judged if j.error]
    if failed and len(failed) == len(judged):
        raise ModelError(f"no judge gave a verdict on the repair: {failed[0]}")
    return judged


def outputs_of(ctx: StageContext, repairs: list[Repair], conversations: dict[str, Conversation]) -> tuple[int, int]:
    """preferences.jsonl and repaired_finetune.jsonl from the kept repairs, each checked first."""
    preferences, examples = [], []
    for r in repairs:
        if not (r.kept and r.repaired):
            continue
        original = conversations[r.conversation_id]
        prefix = [m for m in original.messages if m.turn < r.turn]
        pair = preference_example(original, prefix, r.repaired, r.original)
        problems = validate_preference(pair)
        if problems:
            raise CharevalError(f"the preference pair of {r.conversation_id} does not validate: {problems[0]}")
        preferences.append(pair)
        repaired = original.model_copy(
            update={
                "messages": [*prefix, Message(role="assistant", content=r.repaired, turn=r.turn, model=r.teacher_model)]
            }
        )
        example, why = conversation_to_example(repaired)
        if example is None:
            raise CharevalError(f"the repaired conversation {r.conversation_id} is no training example: {why}")
        examples.append(example)
    write_jsonl_atomic(ctx.run_dir / names.PREFERENCES, preferences)
    write_jsonl_atomic(ctx.run_dir / names.REPAIRED_FINETUNE, examples)
    return len(preferences), len(examples)


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    if "evaluations" not in inputs:
        raise ConfigError(
            "stage=repair needs the judges' verdicts on the conversations",
            "pass evaluations_file=<evaluations.jsonl> or evaluate_run=<MLflow run id of an evaluate run>",
        )
    conversations = read_conversations(inputs["conversations"])
    evaluations = latest_by_id(read_records_jsonl(inputs["evaluations"], Evaluation))
    work = slips(conversations, evaluations, s.evaluation.pass_threshold)
    out = ctx.run_dir / names.REPAIRS
    done = finished_ids(out, Repair)  # a rerun resumes: finished repairs are kept, failed ones retried
    todo = [item for item in work if item[0].id not in done]
    if done:
        log.info("resuming: %d repairs already in %s", len(done), out)
    errors: list[str] = []
    with JsonlAppender(out) as records:

        def finished(record: Repair) -> None:
            records.append(record)
            if record.error:
                errors.append(record.id)

        run_parallel(
            lambda conversation, turn, rationale, before: repair_one(ctx, conversation, turn, rationale, before),
            todo,
            workers=ctx.client.parallelism([s.models.teacher_model(), *s.judges()]),
            desc="repairs",
            on_result=finished,
            postfix=lambda: progress(ctx, len(errors)),
        )
    wanted = {c.id for c, *_ in work}
    repairs = [r for r in latest_by_id(read_records_jsonl(out, Repair, tolerate_torn_tail=True)) if r.id in wanted]
    pairs, examples = outputs_of(ctx, repairs, {c.id: c for c in conversations})
    counts = Counter("error" if r.error else ("passed" if r.passed_after else "failed") for r in repairs)
    limit = ctx.knobs("repair", RepairSettings).max_error_fraction
    failure = error_budget(
        "repairs", [r.error for r in repairs if r.error], len(repairs), "repair.max_error_fraction", limit, ctx.run_dir
    )
    return StageResult(
        outputs={
            "repairs": out,
            "preferences": ctx.run_dir / names.PREFERENCES,
            "repaired_finetune": ctx.run_dir / names.REPAIRED_FINETUNE,
        },
        metrics={
            "repair.slips": len(work),
            "repair.passed_rejudge": counts["passed"],
            "repair.failed_rejudge": counts["failed"],
            "repair.errors": counts["error"],
            "repair.kept": sum(r.kept for r in repairs),
            "repair.preference_pairs": pairs,
        },
        summary=(
            f"{len(work)} slips repaired by {s.models.teacher_model()}: {counts['passed']} pass when judged again,"
            f" {counts['failed']} do not, {counts['error']} errors; {pairs} preference pairs ->"
            f" {ctx.run_dir / names.PREFERENCES}, {examples} SFT examples -> {ctx.run_dir / names.REPAIRED_FINETUNE}"
        ),
        failure=failure,
    )


STAGE = STAGES.register(
    "repair",
    Stage(
        run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.REPAIRS, names.PREFERENCES, names.REPAIRED_FINETUNE),
        judges=True,
        teacher=True,
        knobs=("repair", RepairSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
)
