"""Summary statistics and inter-judge agreement, in plain Python (small n, no extra dependency)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); 0 for a single value."""
    if not xs:
        return None
    return _std(xs)


def _std(xs: Sequence[float]) -> float:
    if len(xs) == 1:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ci95(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """95% confidence interval of the mean (Student's t); a single value gives (x, x)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, m
    t = _T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96
    half = t * _std(xs) / math.sqrt(len(xs))
    return m - half, m + half


def exact_agreement(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    return _agreement(a, b) if a else None


def _agreement(a: Sequence[bool], b: Sequence[bool]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa for two raters' pass/fail verdicts; None when chance agreement is total
    (both raters gave one and the same verdict throughout: kappa is undefined)."""
    if not a:
        return None
    n = len(a)
    observed = _agreement(a, b)
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def mean_abs_diff(a: Sequence[float], b: Sequence[float]) -> float | None:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a) if a else None


def wilson95(rate: float | None, n: int) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion (pass rates: sound at 0%, 100% and small n)."""
    if rate is None or n <= 0:
        return None, None
    z = 1.96
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
