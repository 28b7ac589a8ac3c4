"""summary.json: per-evaluator statistics over judgments, and agreement between judge models."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from chareval.evaluators import stats
from chareval.schemas import Evaluation
from chareval.store import names


def verdict(record: Evaluation) -> tuple[int, bool]:
    """A valid judgment's score and pass/fail (an error record has neither)."""
    if record.score is None or record.passed is None:
        raise ValueError(f"judgment {record.id} has neither an error nor a verdict")
    return record.score, record.passed


def evaluator_summary(records: list[Evaluation]) -> dict[str, Any]:
    """Scores are averaged per conversation first (over samples and judges): the CI is over
    conversations, the unit that was sampled. pass_rate and n count every valid judgment."""
    valid = [r for r in records if r.error is None]
    per_item: dict[str, list[int]] = defaultdict(list)
    per_sample_group: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in valid:
        score, _ = verdict(r)
        per_item[r.conversation_id].append(score)
        per_sample_group[(r.conversation_id, r.judge_model)].append(score)
    item_scores = [sum(v) / len(v) for v in per_item.values()]
    low, high = stats.ci95(item_scores)
    spreads = [s for v in per_sample_group.values() if len(v) > 1 and (s := stats.std(v)) is not None]
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
        first, second = [verdict(p[0]) for p in pairs], [verdict(p[1]) for p in pairs]
        verdicts_a, verdicts_b = [v[1] for v in first], [v[1] for v in second]
        out[f"{a} vs {b}"] = {
            "n": len(pairs),
            "exact_agreement": stats.exact_agreement(verdicts_a, verdicts_b),
            "kappa": stats.cohen_kappa(verdicts_a, verdicts_b),
            "mean_abs_score_diff": stats.mean_abs_diff([v[0] for v in first], [v[0] for v in second]),
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
                out[names.judge_metric(name, key)] = entry[key]
        for pair, figures in entry.get("agreement", {}).items():
            for key, value in figures.items():
                if value is not None:
                    out[f"agreement.{name}.{pair}.{key}"] = value
    out["evaluate.n_records"] = summary["n_records"]
    out["evaluate.n_errors"] = summary["n_errors"]
    out["evaluate.error_fraction"] = summary["error_fraction"]
    return out


def before_after(before: dict, after: dict) -> dict[str, float]:
    """before.*, after.* and delta.* for each evaluator's mean score and pass rate."""
    metrics = {}
    for name, b in before["evaluators"].items():
        a = after["evaluators"].get(name, {})
        for key in ("mean", "pass_rate"):
            if b.get(key) is not None:
                metrics[names.BEFORE + names.judge_metric(name, key)] = b[key]
            if a.get(key) is not None:
                metrics[names.AFTER + names.judge_metric(name, key)] = a[key]
            if b.get(key) is not None and a.get(key) is not None:
                metrics[names.DELTA + names.judge_metric(name, key)] = a[key] - b[key]
    return metrics
