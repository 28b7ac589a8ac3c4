"""summary.json: per-evaluator statistics over judgments, and agreement between judge models."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from chareval.evaluators import stats
from chareval.schemas import Evaluation


def evaluator_summary(records: list[Evaluation]) -> dict[str, Any]:
    """Scores are averaged per conversation first (over samples and judges): the CI is over
    conversations, the unit that was sampled. pass_rate and n count every valid judgment."""
    valid = [r for r in records if r.error is None]
    per_item: dict[str, list[int]] = defaultdict(list)
    per_sample_group: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in valid:
        per_item[r.conversation_id].append(r.score)
        per_sample_group[(r.conversation_id, r.judge_model)].append(r.score)
    item_scores = [stats.mean(v) for v in per_item.values()]
    low, high = stats.ci95(item_scores)
    spreads = [stats.std(v) for v in per_sample_group.values() if len(v) > 1]
    return {
        "mean": stats.mean(item_scores),
        "std": stats.std(item_scores),
        "ci_low": low,
        "ci_high": high,
        "pass_rate": stats.mean([1.0 if r.passed else 0.0 for r in valid]),
        "n": len(valid),
        "n_items": len(item_scores),
        "n_errors": len(records) - len(valid),
        "sample_spread": stats.mean(spreads),  # mean std of one judge's repeated scores; None if k=1
    }


def agreement(records: list[Evaluation], judges: list[str]) -> dict[str, Any]:
    """For each pair of judges: verdicts aligned on (conversation, sample) where both are valid."""
    by_key = {(r.judge_model, r.conversation_id, r.sample): r for r in records if r.error is None}
    out = {}
    for a, b in combinations(judges, 2):
        pairs = [
            (ra, by_key[(b, conv, sample)])
            for (judge, conv, sample), ra in sorted(by_key.items())
            if judge == a and (b, conv, sample) in by_key
        ]
        verdicts_a, verdicts_b = [p[0].passed for p in pairs], [p[1].passed for p in pairs]
        out[f"{a} vs {b}"] = {
            "n": len(pairs),
            "exact_agreement": stats.exact_agreement(verdicts_a, verdicts_b),
            "kappa": stats.cohen_kappa(verdicts_a, verdicts_b),
            "mean_abs_score_diff": stats.mean_abs_diff([p[0].score for p in pairs], [p[1].score for p in pairs]),
        }
    return out


def summarize(records: list[Evaluation], evaluators: list[str], judges: list[str]) -> dict[str, Any]:
    by_evaluator: dict[str, list[Evaluation]] = defaultdict(list)
    for r in records:
        by_evaluator[r.evaluator].append(r)
    summary: dict[str, Any] = {"judges": judges, "evaluators": {}}
    for name in evaluators:
        rows = by_evaluator.get(name, [])
        entry = evaluator_summary(rows)
        if len(judges) > 1:
            entry["by_judge"] = {j: evaluator_summary([r for r in rows if r.judge_model == j]) for j in judges}
            entry["agreement"] = agreement(rows, judges)
        summary["evaluators"][name] = entry
    total = len(records)
    errors = sum(r.error is not None for r in records)
    summary["n_records"], summary["n_errors"] = total, errors
    summary["error_fraction"] = errors / total if total else 0.0
    return summary


def metrics(summary: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: judge.<evaluator>.mean|std|pass_rate|ci_low|ci_high|n|n_errors, agreement.*"""
    out: dict[str, float] = {}
    for name, entry in summary["evaluators"].items():
        for key in ("mean", "std", "pass_rate", "ci_low", "ci_high", "n", "n_errors", "sample_spread"):
            if entry.get(key) is not None:
                out[f"judge.{name}.{key}"] = entry[key]
        for pair, figures in entry.get("agreement", {}).items():
            for key, value in figures.items():
                if value is not None:
                    out[f"agreement.{name}.{pair}.{key}"] = value
    out["evaluate.n_records"] = summary["n_records"]
    out["evaluate.n_errors"] = summary["n_errors"]
    out["evaluate.error_fraction"] = summary["error_fraction"]
    return out
