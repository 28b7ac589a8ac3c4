"""stage=prepare: conversations -> Together conversational fine-tuning JSONL."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from chareval.config import PrepareSettings
from chareval.errors import CharevalError, ConfigError, InputError
from chareval.finetune.data_format import conversation_to_example, estimate_tokens, validate_file
from chareval.io import latest_by_id, read_records_jsonl, write_jsonl_atomic
from chareval.schemas import Conversation, Evaluation
from chareval.stages.base import STAGES, InputSpec, Stage, StageContext, StageResult, read_conversations
from chareval.stages.selection import select, verdicts
from chareval.store import names

log = logging.getLogger(__name__)


def warn_of_cuts(ctx: StageContext, examples: list[dict]) -> int:
    """How many examples the chosen backend will not take whole (estimated), with a warning that says
    what it will do with them (each backend's settings say: Together refuses a line above the model's
    context length before upload; local LoRA leaves out earlier exchanges)."""
    f = ctx.settings.finetune
    sizes = [estimate_tokens(e) for e in examples]
    longer = [n for n in sizes if n > f.token_limit()]
    if longer:
        log.warning("%s", f.cut_warning(len(longer), len(sizes), min(longer)))
    return len(longer)


SELECTION_FILE = names.PREPARE_SELECTION


def choose(
    ctx: StageContext, knobs: PrepareSettings, conversations: list[Conversation], verdicts_file: Path | None
) -> tuple[list[Conversation], Counter[str]]:
    """The conversations to train on under prepare.select (cut ones cut) and the count of each rule,
    every decision written to prepare_selection.jsonl. Verdicts about conversations the input lacks,
    and conversations without verdicts, are reported: nothing is dropped silently."""
    if knobs.select != "all" and verdicts_file is None:
        raise ConfigError(
            f"prepare.select={knobs.select} needs the judges' verdicts",
            "pass evaluations_file=<evaluations.jsonl> or evaluate_run=<MLflow run id> (stage=pipeline judges first)",
        )
    found = {}
    if verdicts_file is not None:
        evaluations = latest_by_id(read_records_jsonl(verdicts_file, Evaluation))
        found = verdicts(evaluations, ctx.settings.evaluation.pass_threshold)
        strangers = sorted(set(found) - {c.id for c in conversations})
        if strangers:
            log.warning(
                "%d conversation(s) judged in %s are not in the input: %s%s (verdicts of another run?)",
                len(strangers),
                verdicts_file,
                ", ".join(strangers[:5]),
                " …" if len(strangers) > 5 else "",
            )
    decisions = [select(c, found.get(c.id), knobs.select, knobs.require) for c in conversations]
    write_jsonl_atomic(ctx.run_dir / SELECTION_FILE, [d.model_dump(mode="json") for d, _ in decisions])
    unjudged = [d.conversation_id for d, _ in decisions if d.rule == "no_verdicts"]
    if unjudged:
        log.warning(
            "%d conversation(s) have no verdicts (or miss a required evaluator's) and are left out: %s%s",
            len(unjudged),
            ", ".join(unjudged[:5]),
            " …" if len(unjudged) > 5 else "",
        )
    counts: Counter[str] = Counter(d.rule for d, _ in decisions)
    log.info("prepare.select=%s: %s", knobs.select, ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items())))
    return [c for _, c in decisions if c is not None], counts


def nothing_to_teach(
    knobs: PrepareSettings, conversations: list[Conversation], rules: dict[str, int], skipped: Counter[str]
) -> str:
    """Why the training file came out empty, and what to do (an empty file would fail the fine-tune
    with less to go on)."""
    why = ", ".join(f"{n} {rule}" for rule, n in rules.items())
    if skipped:
        why += "; skipped: " + ", ".join(f"{n} {reason}" for reason, n in skipped.items())
    if knobs.select == "all":
        fix = "rerun stage=conversations (finished ones are kept, errored ones retried)"
    else:
        fix = (
            "teach from every conversation (prepare.select=all; finetune_loop.select=all in the closed loop), "
            "make more conversations, or judge with a model that finds the slips (models=seed; check a judge "
            f"with make judge-check): {SELECTION_FILE} says why each conversation was left out"
        )
    return (
        f"no fine-tuning example: prepare.select={knobs.select} kept none of {len(conversations)} "
        f"conversation(s) ({why})\n  fix: {fix}"
    )


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    out = Path(s.output_file).resolve() if s.output_file else ctx.run_dir / names.FINETUNE_DATA
    if out.is_dir():
        raise InputError(
            f"output_file={s.output_file} is a directory", f"name a file, e.g. output_file={out}/finetune.jsonl"
        )
    if out.exists() and out.samefile(inputs["conversations"]):
        raise InputError(f"output_file={s.output_file} is the input file: it would be overwritten", "write elsewhere")
    conversations = read_conversations(inputs["conversations"])
    knobs = ctx.knobs("prepare", PrepareSettings)
    chosen, rules = choose(ctx, knobs, conversations, inputs.get("evaluations"))
    examples: list[dict] = []
    skipped: Counter[str] = Counter()
    for conversation in chosen:
        if conversation.error and not knobs.skip_errored:
            raise CharevalError(
                f"{conversation.id} has an error ({conversation.error})",
                "rerun stage=conversations to retry it, or set prepare.skip_errored=true",
            )
        converted = conversation_to_example(conversation)
        if converted[0] is None:
            skipped[converted[1]] += 1
            log.info("skipping %s: %s", conversation.id, converted[1])
            continue
        examples.append(converted[0])
    write_jsonl_atomic(out, examples)
    for reason, count in skipped.items():
        log.warning("skipped %d conversation(s): %s", count, reason)
    report = validate_file(out)
    if report.problems:  # conversation_to_example validates, so this is a bug if it ever fires
        raise CharevalError(f"the written file does not validate:\n{report.describe()}")
    too_long = warn_of_cuts(ctx, examples)
    return StageResult(
        failure=nothing_to_teach(knobs, conversations, rules, skipped) if not examples else None,
        outputs={"finetune": out, "prepare_selection": ctx.run_dir / SELECTION_FILE},
        metrics={
            "prepare.examples": len(examples),
            "prepare.skipped": sum(skipped.values()),
            "prepare.longer_than_backend": too_long,
        }
        | {f"prepare.selected.{rule}": float(n) for rule, n in rules.items()},
        summary=f"{len(examples)} fine-tuning examples ({sum(skipped.values())} skipped) -> {out}",
    )


STAGE = STAGES.register(
    "prepare",
    Stage(
        run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.FINETUNE_DATA, names.PREPARE_SELECTION),
        knobs=("prepare", PrepareSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
)
