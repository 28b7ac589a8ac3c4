"""Two sets of verdicts on one evaluator, compared: paired when both judged the same contexts (the
closed loop's before and after; a gate's baseline and candidate run on one evaluation set),
independent samples otherwise. The tests come from scipy and statsmodels:

- mean score difference: paired t (scipy's ttest_rel) or Welch's t (ttest_ind), 95% interval;
- pass-rate difference: exact McNemar (statsmodels) on the pairs, with the paired-t interval of the
  0/1 verdicts; unpaired, the score test of two independent proportions (Agresti-Caffo) with
  Newcombe's interval (statsmodels' test_proportions_2indep / confint_proportions_2indep).

The unit is a conversation slot: (context, the conversation's rank among that context's). Its score
is the mean of its valid judgments (several samples or judges), and it passes when most of them
passed (a tie fails: a boundary that held half the time did not hold)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chareval.schemas import Evaluation

UnitKey = tuple[str, int]  # (context, rank of the conversation among that context's conversations)


@dataclass(frozen=True)
class Unit:
    score: float
    passed: bool


def context_key(*sides: Sequence[Evaluation]) -> tuple[str, Callable[[Evaluation], str]]:
    """Contexts match by content when every record carries its context's hash (ids like ctx-001 are
    given again by every contexts run), else by id."""
    if all(r.context_sha256 for side in sides for r in side):
        return "context content", lambda r: r.context_sha256 or ""
    return "context id", lambda r: r.context_id


def units(records: Sequence[Evaluation], evaluator: str, key: Callable[[Evaluation], str]) -> dict[UnitKey, Unit]:
    valid = [r for r in records if r.evaluator == evaluator and r.error is None and r.score is not None]
    by_conversation: dict[tuple[str, str], list[Evaluation]] = defaultdict(list)
    for r in valid:
        by_conversation[(key(r), r.conversation_id)].append(r)
    ranks: dict[str, int] = defaultdict(int)
    out: dict[UnitKey, Unit] = {}
    for context, conversation in sorted(by_conversation):
        judged = by_conversation[(context, conversation)]
        passes = sum(bool(r.passed) for r in judged)
        out[(context, ranks[context])] = Unit(
            score=sum(r.score or 0 for r in judged) / len(judged), passed=passes * 2 > len(judged)
        )
        ranks[context] += 1
    return out


def compare(baseline: Sequence[Evaluation], candidate: Sequence[Evaluation], evaluator: str) -> dict[str, Any]:
    """The candidate against the baseline on one evaluator (differences are candidate - baseline)."""
    matched_on, key = context_key(baseline, candidate)
    a, b = units(baseline, evaluator, key), units(candidate, evaluator, key)
    common = sorted(a.keys() & b.keys())
    if common:
        out = paired([a[k] for k in common], [b[k] for k in common])
        out |= {"paired_on": matched_on, "left_out": len(a) + len(b) - 2 * len(common)}
    else:
        out = independent(list(a.values()), list(b.values()))
    return out | {"n_baseline": len(a), "n_candidate": len(b)}


# What the closed loop logs per evaluator (MLflow metrics paired.<evaluator>.<key>).
METRIC_KEYS = (
    "diff_mean",
    "ci_low",
    "ci_high",
    "p_value",
    "n",
    "pass_diff",
    "pass_ci_low",
    "pass_ci_high",
    "pass_p_value",
)


def metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {
        f"paired.{name}.{key}": float(result[key])
        for name, result in results.items()
        for key in METRIC_KEYS
        if result.get(key) is not None
    }


def describe(results: dict[str, dict[str, Any]]) -> str:
    """One line for a person: each evaluator's score difference with its interval, and the pass rates."""
    parts = []
    for name, r in results.items():
        if r.get("diff_mean") is None:
            parts.append(f"{name} no verdicts to compare")
            continue
        interval = f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if r.get("ci_low") is not None else ""
        p = f" p={r['p_value']:.2g}" if r.get("p_value") is not None else ""
        passes = f"pass {_pct(r['baseline_pass_rate'])} -> {_pct(r['candidate_pass_rate'])}"
        pass_p = f" p={r['pass_p_value']:.2g}" if r.get("pass_p_value") is not None else ""
        parts.append(f"{name} score {r['diff_mean']:+.2f}{interval}{p}, {passes}{pass_p}")
    return "; ".join(parts) + (f" (n={next(iter(results.values())).get('n')} pairs)" if results else "")


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def paired(before: Sequence[Unit], after: Sequence[Unit]) -> dict[str, Any]:
    """Pairs in order: before[i] and after[i] are the same context."""
    from statsmodels.stats.contingency_tables import mcnemar

    lost = sum(x.passed and not y.passed for x, y in zip(before, after, strict=True))
    gained = sum(y.passed and not x.passed for x, y in zip(before, after, strict=True))
    both = sum(x.passed and y.passed for x, y in zip(before, after, strict=True))
    table = [[both, lost], [gained, len(before) - both - lost - gained]]
    score = _paired_t([x.score for x in before], [y.score for y in after], bound=9.0)
    passes = _paired_t([float(x.passed) for x in before], [float(y.passed) for y in after], bound=1.0)
    return {
        "test": "paired",
        "score_test": "paired t",
        "pass_test": "exact McNemar",
        "n": len(before),
        "baseline_mean": _mean([x.score for x in before]),
        "candidate_mean": _mean([y.score for y in after]),
        **score,
        "baseline_pass_rate": _mean([float(x.passed) for x in before]),
        "candidate_pass_rate": _mean([float(y.passed) for y in after]),
        "pass_diff": passes["diff_mean"],
        "pass_ci_low": passes["ci_low"],
        "pass_ci_high": passes["ci_high"],
        "pass_p_value": float(mcnemar(table, exact=True).pvalue),
        "lost": lost,  # passed before, failed after
        "gained": gained,
    }


def independent(baseline: Sequence[Unit], candidate: Sequence[Unit]) -> dict[str, Any]:
    from scipy import stats
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    na, nb = len(baseline), len(candidate)
    pa, pb = sum(u.passed for u in baseline), sum(u.passed for u in candidate)
    xa, xb = [u.score for u in baseline], [u.score for u in candidate]
    mean_a, mean_b = _mean(xa), _mean(xb)
    out: dict[str, Any] = {
        "test": "independent",
        "score_test": "Welch t",
        "pass_test": "two-proportion (Agresti-Caffo)",
        "n": None,
        "baseline_mean": mean_a,
        "candidate_mean": mean_b,
        "diff_mean": mean_b - mean_a if mean_a is not None and mean_b is not None else None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "baseline_pass_rate": pa / na if na else None,
        "candidate_pass_rate": pb / nb if nb else None,
        "pass_diff": pb / nb - pa / na if na and nb else None,
        "pass_ci_low": None,
        "pass_ci_high": None,
        "pass_p_value": None,
    }
    if not (na and nb):
        return out
    with warnings.catch_warnings():  # 0% or 100% on both sides: odds ratios divide by zero, the tests still hold
        warnings.simplefilter("ignore")
        out["pass_p_value"] = _finite(test_proportions_2indep(pb, nb, pa, na, method="agresti-caffo").pvalue, 1.0)
        low, high = confint_proportions_2indep(pb, nb, pa, na, method="newcomb")
        out["pass_ci_low"], out["pass_ci_high"] = float(low), float(high)
        if na > 1 and nb > 1 and (_varies(xa) or _varies(xb)):
            result = stats.ttest_ind(xb, xa, equal_var=False)
            interval = result.confidence_interval(0.95)
            out |= {"ci_low": float(interval.low), "ci_high": float(interval.high), "p_value": float(result.pvalue)}
        elif na > 1 and nb > 1:  # no spread on either side: the difference is what it is
            out |= {"ci_low": out["diff_mean"], "ci_high": out["diff_mean"], "p_value": _exact(out["diff_mean"])}
    return out


def _paired_t(before: list[float], after: list[float], bound: float) -> dict[str, Any]:
    """Mean difference (after - before), its 95% interval and the paired t p-value. One pair has no
    interval; pairs that all differ by the same amount have a zero-width one (scipy gives p=0 for a
    non-zero constant, nan for all zeros: that is no difference, p=1). With few pairs the t interval
    can pass what a difference can be (+-9 score points, +-100% of passes): it is clipped there."""
    from scipy import stats

    diffs = [y - x for x, y in zip(before, after, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return {"diff_mean": mean, "ci_low": None, "ci_high": None, "p_value": None}
    if not _varies(diffs):
        return {"diff_mean": mean, "ci_low": mean, "ci_high": mean, "p_value": _exact(mean)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.ttest_rel(after, before)
        interval = result.confidence_interval(0.95)
    return {
        "diff_mean": mean,
        "ci_low": max(-bound, float(interval.low)),
        "ci_high": min(bound, float(interval.high)),
        "p_value": float(result.pvalue),
    }


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _varies(xs: Sequence[float]) -> bool:
    """Whether the values differ at all."""
    return max(xs) - min(xs) > 1e-12


def _exact(diff: float | None) -> float:
    return 1.0 if not diff else 0.0


def _finite(value: Any, default: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else default
