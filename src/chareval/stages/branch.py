"""stage=branch: every conversation continued branch.samples times from one of its turns.

The messages before turn K are the parent's, word for word; from K on each branch is played anew
(its own id, hence its own seeds) to the parent's length, by the configured assistant and user
models: `models.assistant=local_lora/<name> branch.from_turn=slip` replays each slip with the tuned
model. A branch plays the parent's user strategy; conversations.stop_on_breach applies as configured."""

from __future__ import annotations

import logging
from pathlib import Path

from chareval.config import BranchSettings, ConversationsSettings
from chareval.errors import CharevalError, ConfigError
from chareval.io import finished_ids, read_records_jsonl
from chareval.schemas import Conversation, Evaluation, Usage
from chareval.stages.base import STAGES, InputSpec, Stage, StageContext, StageResult, error_budget, read_conversations
from chareval.stages.conversations import attack_metrics, play, play_all, traced
from chareval.stages.prompts import with_characters
from chareval.stages.selection import SLIP_EVALUATOR, Verdict, verdicts
from chareval.store import names

log = logging.getLogger(__name__)


def branch_point(
    parent: Conversation, from_turn: int | str, slips: dict[str, Verdict] | None
) -> tuple[int | None, str]:
    """The first turn a branch of `parent` writes anew, or None and why it is not branched."""
    if parent.error:
        return None, f"it ended with an error ({parent.error[:100]})"
    if from_turn == "slip":
        verdict = (slips or {}).get(parent.id)
        if verdict is None:
            return None, f"no {SLIP_EVALUATOR} verdict of it in the evaluations given"
        if verdict.passed or verdict.slip_turn is None:
            return None, "it held (no slip turn)" if verdict.passed else "it failed, but the judges named no slip turn"
        k = verdict.slip_turn
    else:
        k = int(from_turn)
    if k >= parent.turns:
        return None, f"branch.from_turn={k} is at or past its length (turns={parent.turns})"
    if k > len(parent.messages):
        return None, f"it has only {len(parent.messages)} messages, fewer than branch.from_turn={k}"
    if parent.breach_turn is not None and parent.breach_turn < k:
        return None, f"the kept turns would include its breach at turn {parent.breach_turn}"
    return k, ""


def start_of(ctx: StageContext, parent: Conversation, k: int, sample: int) -> Conversation:
    """Branch number `sample` of `parent` before it is played: the kept prefix and the links."""
    return parent.model_copy(
        update={
            "id": f"{parent.id}-b{sample}",
            "assistant_model": ctx.client.model_for("assistant"),
            "user_model": ctx.client.model_for("user"),
            "seed": ctx.settings.seed,
            "messages": parent.messages[:k],
            "usage": Usage(),
            "error": None,
            "trace_id": None,
            "stop_on_breach": ctx.knobs("conversations", ConversationsSettings).stop_on_breach,
            "breach_turn": None,
            "parent_id": parent.id,
            "branched_at": k,
        }
    )


def slip_verdicts(ctx: StageContext, inputs: dict[str, Path]) -> dict[str, Verdict]:
    if "evaluations" not in inputs:
        raise ConfigError(
            "branch.from_turn=slip branches each conversation at its slip, which the judges' verdicts name",
            "add evaluations_file=<evaluations.jsonl> or evaluate_run=<run id>, or give a turn: branch.from_turn=3",
        )
    found = verdicts(read_records_jsonl(inputs["evaluations"], Evaluation), ctx.settings.evaluation.pass_threshold)
    return {cid: by[SLIP_EVALUATOR] for cid, by in found.items() if SLIP_EVALUATOR in by}


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    s = ctx.settings
    knobs = ctx.knobs("branch", BranchSettings)
    parents = read_conversations(inputs["conversations"])
    slips = slip_verdicts(ctx, inputs) if knobs.from_turn == "slip" else None
    planned: list[Conversation] = []
    skipped: dict[str, str] = {}
    for parent in parents:
        k, why = branch_point(parent, knobs.from_turn, slips)
        if k is None:
            skipped[parent.id] = why
            continue
        parent = with_characters(parent, s.persona, s.user_persona)
        planned += [start_of(ctx, parent, k, j) for j in range(1, knobs.samples + 1)]
    for cid, why in skipped.items():
        log.warning("not branching %s: %s", cid, why)
    if not planned:
        raise CharevalError(
            f"none of the {len(parents)} conversations of {inputs['conversations']} can be branched "
            f"(branch.from_turn={knobs.from_turn}); the first: {next(iter(skipped.values()), 'no conversations')}",
            "pick another branch.from_turn, or other conversations",
        )
    out = ctx.run_dir / names.CONVERSATIONS
    done = finished_ids(out, Conversation)  # resume: finished branches are kept
    if done:
        log.info("resuming: %d branches already in %s", len(done), out)
    work = [(b.id, b) for b in planned if b.id not in done]
    final = play_all(
        ctx,
        out,
        work,
        {b.id for b in planned},
        lambda _id, start: traced(
            ctx, start.id, {"parent_id": start.parent_id, "branched_at": start.branched_at}, lambda: play(ctx, start)
        ),
        "branches",
    )
    errors = [c.error for c in final if c.error]
    failure = error_budget(
        "branches",
        errors,
        len(final),
        "conversations.max_error_fraction",
        ctx.knobs("conversations", ConversationsSettings).max_error_fraction,
        ctx.run_dir,
    )
    return StageResult(
        outputs={"conversations": out},
        metrics={
            "branch.count": len(final),
            "branch.parents": len(parents) - len(skipped),
            "branch.skipped": len(skipped),
            "branch.n_errors": len(errors),
            "conversations.count": len(final),
        }
        | attack_metrics("branch", final),
        summary=f"{len(final)} branches of {len(parents) - len(skipped)} conversations "
        f"({len(skipped)} not branched, {len(errors)} with errors) -> {out}",
        failure=failure,
    )


STAGE = STAGES.register(
    "branch",
    Stage(  # the conversations stage's knobs come with it (conf/stage/branch.yaml)
        run,
        InputSpec("conversations", "input_file", "conversations_run", names.CONVERSATIONS),
        writes=(names.CONVERSATIONS,),
        roles=("assistant", "user"),
        knobs=("branch", BranchSettings),
        optional=(InputSpec("evaluations", "evaluations_file", "evaluate_run", names.EVALUATIONS),),
    ),
)
