"""stage=prepare: conversations -> Together conversational fine-tuning JSONL."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from chareval.config import PrepareSettings
from chareval.errors import CharevalError, InputError
from chareval.finetune.data_format import conversation_to_example, validate_file
from chareval.io import write_jsonl_atomic
from chareval.stages.base import StageContext, StageResult, read_conversations

log = logging.getLogger(__name__)


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    out = Path(s.output_file).resolve() if s.output_file else ctx.run_dir / "finetune.jsonl"
    if out.is_dir():
        raise InputError(
            f"output_file={s.output_file} is a directory", f"name a file, e.g. output_file={out}/finetune.jsonl"
        )
    if out.exists() and out.samefile(inputs["conversations"]):
        raise InputError(f"output_file={s.output_file} is the input file: it would be overwritten", "write elsewhere")
    conversations = read_conversations(inputs["conversations"])
    examples: list[dict] = []
    skipped: Counter[str] = Counter()
    for conversation in conversations:
        if conversation.error and not ctx.knobs("prepare", PrepareSettings).skip_errored:
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
    return StageResult(
        outputs={"finetune": out},
        metrics={"prepare.examples": len(examples), "prepare.skipped": sum(skipped.values())},
        summary=f"{len(examples)} fine-tuning examples ({sum(skipped.values())} skipped) -> {out}",
    )
