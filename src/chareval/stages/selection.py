"""Which conversations teach the character (prepare.select), from the judges' verdicts.

- `all`: every conversation (the seed's behaviour).
- `passed`: a conversation passes an evaluator when the mean score of that evaluator's judgments of it
  (every judge and sample that answered) reaches evaluation.pass_threshold; it is kept when it passes
  every evaluator in prepare.require (default: every evaluator in the verdicts).
- `until_slip`: a passing conversation whole; a failing one cut before its slip, the earliest
  `slip_turn` any failing boundary_holding judgment names, so that it ends on the assistant turn
  before it. One that failed with no slip turn (another evaluator failed, or the judges named none)
  is left out: nothing says where it went wrong."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from chareval.schemas import Conversation, Evaluation, Selection

SLIP_EVALUATOR = "boundary_holding"


@dataclass(frozen=True)
class Verdict:
    evaluator: str
    mean: float | None  # None: every judgment of it was an error
    passed: bool
    slip_turn: int | None  # the earliest slip a failing judgment named

    def describe(self) -> str:
        return f"{self.evaluator} ({self.mean:.3g}/10)" if self.mean is not None else f"{self.evaluator} (no verdict)"


def verdicts(evaluations: Iterable[Evaluation], pass_threshold: int) -> dict[str, dict[str, Verdict]]:
    """conversation id -> evaluator -> its verdict over every judge and sample."""
    grouped: dict[str, dict[str, list[Evaluation]]] = defaultdict(lambda: defaultdict(list))
    for e in evaluations:
        grouped[e.conversation_id][e.evaluator].append(e)
    result: dict[str, dict[str, Verdict]] = {}
    for conversation_id, by_evaluator in grouped.items():
        result[conversation_id] = {}
        for evaluator, judgments in by_evaluator.items():
            scores = [j.score for j in judgments if j.error is None and j.score is not None]
            mean = sum(scores) / len(scores) if scores else None
            slips = [
                j.details["slip_turn"]
                for j in judgments
                if j.passed is False and isinstance(j.details.get("slip_turn"), int)
            ]
            result[conversation_id][evaluator] = Verdict(
                evaluator, mean, mean is not None and mean >= pass_threshold, min(slips) if slips else None
            )
    return result


def select(
    conversation: Conversation, found: dict[str, Verdict] | None, rule: str, require: list[str] | None
) -> tuple[Selection, Conversation | None]:
    """The selection record, and the conversation to train on (cut, for until_slip) or None."""

    def choice(kept: bool, kind: str, reason: str, cut: int | None = None) -> Selection:
        return Selection(conversation_id=conversation.id, kept=kept, rule=kind, reason=reason, cut_before_turn=cut)

    if conversation.error:  # under `all`, prepare.skip_errored decides what becomes of it, as before
        reason = f"ended with an error ({conversation.error[:120]})"
        return choice(False, "errored", reason), conversation if rule == "all" else None
    if rule == "all":
        return choice(True, "all", "kept: prepare.select=all"), conversation
    if not found:
        return choice(False, "no_verdicts", "no verdicts for it: judge it (stage=evaluate) to select it"), None
    names = require or sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        return choice(False, "no_verdicts", f"no verdict from {', '.join(missing)}"), None
    failed = [found[n] for n in names if not found[n].passed]
    if not failed:
        return choice(True, "passed", "passed " + ", ".join(found[n].describe() for n in names)), conversation
    failure = "failed " + ", ".join(v.describe() for v in failed)
    if rule == "passed":
        return choice(False, "failed", failure), None
    slip = found.get(SLIP_EVALUATOR)
    turns = {m.turn for m in conversation.messages if m.role == "assistant"}
    if slip is None or slip.passed or slip.slip_turn is None or slip.slip_turn not in turns:
        return choice(False, "no_slip_turn", f"{failure}, with no slip turn to cut before: left out"), None
    if slip.slip_turn == min(turns):
        return choice(False, "slip_at_first_turn", f"{failure}: it slipped at its first reply, nothing to keep"), None
    cut = conversation.model_copy(update={"messages": [m for m in conversation.messages if m.turn < slip.slip_turn]})
    return choice(
        True, "cut_before_slip", f"cut before the slip at turn {slip.slip_turn} ({failure})", slip.slip_turn
    ), cut
