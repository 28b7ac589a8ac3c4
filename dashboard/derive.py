"""Tables the pages show, derived from the records the runs wrote (no Streamlit here, so they are
tested directly). Reshaping only: scores, verdicts and statistics come from the runs' own files."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from chareval.evaluators.stats import mean, wilson95
from chareval.evaluators.summary import before_after
from chareval.schemas import Context, Conversation, Evaluation, Message
from chareval.store import names


def valid(evaluations: list[Evaluation]) -> list[Evaluation]:
    return [e for e in evaluations if e.error is None]


def by_conversation(evaluations: list[Evaluation]) -> dict[str, list[Evaluation]]:
    grouped: dict[str, list[Evaluation]] = defaultdict(list)
    for e in evaluations:
        grouped[e.conversation_id].append(e)
    return grouped


def conversation_rows(
    conversations: list[Conversation], evaluations: list[Evaluation], contexts: dict[str, Context]
) -> list[dict[str, Any]]:
    """One row per conversation for the list: what it is, how it ended, how it was judged."""
    judged = by_conversation(evaluations)
    checked = any(c.stop_on_breach for c in conversations)  # the column only where the live check ran
    rows = []
    for c in conversations:
        verdicts = valid(judged.get(c.id, []))
        failed = sorted({e.evaluator for e in verdicts if e.passed is False})
        context = contexts.get(c.context_id)
        row: dict[str, Any] = {
            "conversation": c.id,
            "context": c.context_id,
            "title": context.title if context else "",
            "messages": len(c.messages),
        }
        if checked:
            row["breach at turn"] = "" if c.breach_turn is None else str(c.breach_turn)
        rows.append(
            row
            | {
                "error": c.error or "",
                "mean score": mean([e.score for e in verdicts if e.score is not None]),
                "failed evaluators": ", ".join(failed),
                "judgment errors": sum(1 for e in judged.get(c.id, []) if e.error),
            }
        )
    return rows


@dataclass(frozen=True)
class Mark:
    """A judgment pointing at one turn: cited as evidence, or the turn where the character slipped."""

    kind: str  # "evidence" | "slip"
    evaluator: str
    judge: str
    sample: int
    passed: bool | None
    score: int | None

    def text(self) -> str:
        verdict = "pass" if self.passed else "fail"
        if self.kind == "slip":
            return f"slip here: {self.evaluator} ({self.judge}, sample {self.sample}) - first turn where it broke"
        return f"evidence for {self.evaluator}: {verdict} {self.score}/10 ({self.judge}, sample {self.sample})"


def message_caption(m: Message, conversation: Conversation) -> str:
    """turn · role · model, the attacker's tactic on a user turn, and where a branch begins."""
    parts = [f"turn {m.turn}", m.role, m.model]
    if m.tactic:
        parts.append(f"tactic: {m.tactic}" + (f" ({m.move})" if m.move else ""))
    if conversation.branched_at is not None:
        parts.append("from the parent" if m.turn < conversation.branched_at else "branch")
    return " · ".join(parts)


def marks(evaluations: list[Evaluation]) -> dict[int, list[Mark]]:
    """Turn -> the verdicts that cite it (evidence_turns) or put the slip there (details.slip_turn)."""
    out: dict[int, list[Mark]] = defaultdict(list)
    for e in valid(evaluations):
        slip = e.details.get("slip_turn")
        if isinstance(slip, int):
            out[slip].append(Mark("slip", e.evaluator, e.judge_model, e.sample, e.passed, e.score))
        for turn in e.evidence_turns:
            out[turn].append(Mark("evidence", e.evaluator, e.judge_model, e.sample, e.passed, e.score))
    return dict(out)


def judgment_rows(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    return [
        {
            "evaluator": e.evaluator,
            "judge": e.judge_model,
            "answered by": e.answered_model or "",
            "sample": e.sample,
            "score": e.score,
            "passed": e.passed,
            "evidence turns": ", ".join(map(str, e.evidence_turns)),
            "slip turn": e.details.get("slip_turn"),
            "error": e.error or "",
        }
        for e in sorted(evaluations, key=lambda e: (e.evaluator, e.judge_model, e.sample))
    ]


def disagreements(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    """Conversation x evaluator where judges, or one judge's samples, gave different verdicts."""
    groups: dict[tuple[str, str], list[Evaluation]] = defaultdict(list)
    for e in valid(evaluations):
        groups[(e.conversation_id, e.evaluator)].append(e)
    rows = []
    for (conversation, evaluator), group in sorted(groups.items()):
        if len({e.passed for e in group}) > 1:
            group.sort(key=lambda e: (e.judge_model, e.sample))
            rows.append(
                {
                    "conversation": conversation,
                    "evaluator": evaluator,
                    "passes": sum(bool(e.passed) for e in group),
                    "fails": sum(not e.passed for e in group),
                    "verdicts": "; ".join(
                        f"{e.judge_model} #{e.sample}: {'pass' if e.passed else 'fail'} {e.score}" for e in group
                    ),
                }
            )
    return rows


def error_rows(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "conversation": e.conversation_id,
            "evaluator": e.evaluator,
            "judge": e.judge_model,
            "sample": e.sample,
            "error": e.error,
        }
        for e in evaluations
        if e.error
    ]


def score_rows(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    return [
        {"evaluator": e.evaluator, "score": e.score, "verdict": "pass" if e.passed else "fail"}
        for e in valid(evaluations)
    ]


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """summary.json per evaluator, as the evaluate stage wrote it."""
    rows = []
    for name, entry in summary.get("evaluators", {}).items():
        rows.append(
            {
                "evaluator": name,
                "mean": entry.get("mean"),
                "ci_low": entry.get("ci_low"),
                "ci_high": entry.get("ci_high"),
                "pass_rate": entry.get("pass_rate"),
                "n": entry.get("n"),
                "conversations": entry.get("n_items"),
                "errors": entry.get("n_errors"),
                "sample_spread": entry.get("sample_spread"),
            }
        )
    return rows


def agreement_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"evaluator": name, "judges": pair, **figures}
        for name, entry in summary.get("evaluators", {}).items()
        for pair, figures in entry.get("agreement", {}).items()
    ]


# Dimensions a comparison can be plotted against: label -> how a run says it.
DIMENSIONS = {
    "persona": lambda r: r.choice("persona"),
    "user persona": lambda r: r.choice("user_persona"),
    "turns": lambda r: r.param("turns"),
    "user strategy": lambda r: r.param("user_strategy"),
    "models": lambda r: r.choice("models"),
    "assistant model": lambda r: r.param("models.assistant"),
    "user model": lambda r: r.param("models.user"),
    "judge": lambda r: ", ".join(r.judges()),
    "step": lambda r: r.step,
}


def compare_rows(runs: list) -> list[dict[str, Any]]:
    """Evaluate runs (RunView) x evaluator: each run's logged judge metrics, with its choices. The score
    CI is the stage's own (t over conversations); the pass-rate interval is Wilson's, from pass_rate and n."""
    rows = []
    for r in runs:
        evaluators = sorted(
            {k.split(".")[1] for k in r.metrics if k.startswith(names.JUDGE_PREFIX) and k.endswith(".mean")}
        )
        for name in evaluators:
            m = {
                key: r.metrics.get(names.judge_metric(name, key))
                for key in ("mean", "ci_low", "ci_high", "pass_rate", "n", "n_errors")
            }
            low, high = wilson95(m["pass_rate"], int(m["n"] or 0))
            rows.append(
                {
                    "run": r.run_id,
                    "run name": r.name,
                    **{d: f(r) or "" for d, f in DIMENSIONS.items()},
                    "evaluator": name,
                    "mean": m["mean"],
                    "ci_low": m["ci_low"],
                    "ci_high": m["ci_high"],
                    "pass_rate": m["pass_rate"],
                    "pass_low": low,
                    "pass_high": high,
                    "n": m["n"],
                    "errors": m["n_errors"],
                    "cost_usd": r.metrics.get(names.COST_USD),
                }
            )
    return rows


def pair_conversations(
    a: list[Conversation], b: list[Conversation]
) -> list[tuple[str, Conversation | None, Conversation | None]]:
    """Conversations of two runs on the same contexts, paired by context (the k-th of a context with
    the k-th of the same context in the other run), in the first run's order."""

    def keyed(conversations: list[Conversation]) -> dict[tuple[str, int], Conversation]:
        seen: dict[str, int] = defaultdict(int)
        out = {}
        for c in conversations:
            out[(c.context_id, seen[c.context_id])] = c
            seen[c.context_id] += 1
        return out

    ka, kb = keyed(a), keyed(b)
    order = list(ka) + [k for k in kb if k not in ka]
    return [(context, ka.get((context, i)), kb.get((context, i))) for context, i in order]


def delta_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Per evaluator: A, B and B - A for the mean score and pass rate (the closed loop's own figures)."""
    metrics = before_after(before, after)
    rows = []
    for name in before.get("evaluators", {}):
        row: dict[str, Any] = {"evaluator": name}
        for key in ("mean", "pass_rate"):
            row[f"A {key}"] = metrics.get(names.BEFORE + names.judge_metric(name, key))
            row[f"B {key}"] = metrics.get(names.AFTER + names.judge_metric(name, key))
            row[f"delta {key}"] = metrics.get(names.DELTA + names.judge_metric(name, key))
        rows.append(row)
    return rows


def paired_rows(paired: dict[str, dict[str, Any]], group: str = "held-out") -> list[dict[str, Any]]:
    """A closed loop's before_after.json, per evaluator: the paired differences (after - before) with
    their 95% intervals and p-values (chareval/evaluators/compare.py says which tests)."""
    return [
        {
            "group": group,
            "evaluator": name,
            "pairs": r.get("n"),
            "score diff": r.get("diff_mean"),
            "score ci_low": r.get("ci_low"),
            "score ci_high": r.get("ci_high"),
            f"p ({r.get('score_test', 'paired t')})": r.get("p_value"),
            "pass before": r.get("baseline_pass_rate"),
            "pass after": r.get("candidate_pass_rate"),
            "pass diff": r.get("pass_diff"),
            "pass ci_low": r.get("pass_ci_low"),
            "pass ci_high": r.get("pass_ci_high"),
            f"p ({r.get('pass_test', 'exact McNemar')})": r.get("pass_p_value"),
        }
        for name, r in paired.items()
    ]


def survival_rows(curves: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate runs' breach_curve.json (run label -> file) as chart rows: one curve per persona × user
    persona × strategy, named by it (with the run's label where two runs share it), from turn 0 where
    every conversation holds."""
    seen: dict[str, int] = defaultdict(int)
    for curve in curves.values():
        for group in curve.get("groups", {}):
            seen[group] += 1
    rows = []
    for run_label, curve in curves.items():
        for group, result in curve.get("groups", {}).items():
            label = group if seen[group] == 1 else f"{group} · {run_label}"
            rows.append(
                {"curve": label, "turn": 0, "survival": 1.0, "ci_low": 1.0, "ci_high": 1.0, "at_risk": result["n"]}
            )
            for r in result["survival"]:
                low = r["ci_low"] if r["ci_low"] is not None else r["survival"]
                high = r["ci_high"] if r["ci_high"] is not None else r["survival"]
                rows.append({"curve": label, **r, "ci_low": low, "ci_high": high})
    return rows


def pass_hat_rows(run_name: str, curve: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"run": run_name, "k": int(k), "pass^k": v} for k, v in curve.get("all", {}).get("pass_hat_k", {}).items()]
