"""A sweep's comparison, from its jobs' outcomes: a table (job x choices x each evaluator's mean, CI
and pass rate, conversations, cost), a picture (each evaluator's pass rate by persona x user persona
x turns, with 95% intervals), the best and worst job per evaluator, and the jobs' turns-to-breach
curves side by side."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from chareval.evaluators.stats import wilson95
from chareval.evaluators.survival import draw
from chareval.schemas import JobOutcome
from chareval.store import names

CHOICES = ("persona", "user_persona", "turns", "models", "assistant", "user", "judge", "finetune", "experiment")
STATS = ("mean", "ci_low", "ci_high", "pass_rate", "n")
BREACH_COLUMNS = ("breach.survival_end", "breach.median_turn", "breach.breaches", "breach.n")


def evaluators(outcomes: list[JobOutcome]) -> list[str]:
    found = {
        k.split(".")[1]
        for o in outcomes
        for k in o.metrics
        if k.startswith(names.JUDGE_PREFIX) and k.endswith(".pass_rate")
    }
    return sorted(found)


def choice_keys(outcomes: list[JobOutcome]) -> list[str]:
    """The usual choices first, then any other key a job's overrides set (judge_model, a knob, …)."""
    others = sorted({k for o in outcomes for k in o.choices} - set(CHOICES))
    return [c for c in CHOICES if any(c in o.choices for o in outcomes)] + others


def varying(outcomes: list[JobOutcome]) -> list[str]:
    """The choices that differ between jobs: what the sweep compares."""
    return [c for c in choice_keys(outcomes) if len({o.choices.get(c) for o in outcomes}) > 1]


def table(outcomes: list[JobOutcome]) -> list[dict[str, Any]]:
    keys = choice_keys(outcomes)
    rows = []
    for o in outcomes:
        row: dict[str, Any] = {"job": o.num, "status": o.status} | {c: o.choices.get(c) for c in keys}
        for name in evaluators(outcomes):
            row |= {f"{name}.{stat}": o.metrics.get(names.judge_metric(name, stat)) for stat in STATS}
        row |= {k: o.metrics[k] for k in sorted(o.metrics) if k in BREACH_COLUMNS or k.startswith("pass_hat_k.")}
        row["conversations"] = o.metrics.get("conversations.count")
        row["cost_usd"] = o.metrics.get(names.COST_USD)
        rows.append(row)
    return rows


def label(o: JobOutcome, keys: list[str]) -> str:
    return " ".join(f"{k}={o.choices.get(k)}" for k in keys) or f"job {o.num}"


def headline(o: JobOutcome) -> str:
    parts = []
    for name in evaluators([o]):
        rate, mean = (
            o.metrics.get(names.judge_metric(name, "pass_rate")),
            o.metrics.get(names.judge_metric(name, "mean")),
        )
        parts.append(f"{name} pass {rate:.0%}" + (f" (mean {mean:.1f})" if mean is not None else ""))
    if "conversations.count" in o.metrics:
        parts.append(f"{o.metrics['conversations.count']:.0f} conversations")
    if o.metrics.get(names.COST_USD):
        parts.append(f"${o.metrics['cost_usd']:.4f}")
    return ", ".join(parts)


def extremes(outcomes: list[JobOutcome]) -> dict[str, str]:
    """Tags best.<evaluator> and worst.<evaluator>: ranked by pass rate, then mean score."""
    done = [o for o in outcomes if o.status == "completed"]
    keys = varying(done)
    tags = {}
    for name in evaluators(done):
        scored = sorted(
            (_rank(o, name), o.num, o) for o in done if o.metrics.get(names.judge_metric(name, "pass_rate")) is not None
        )
        for tag, (rank, _, o) in (("worst", scored[0]), ("best", scored[-1])) if scored else ():
            tags[f"{tag}.{name}"] = f"job {o.num} ({label(o, keys)}): pass {rank[0]:.0%}, mean {rank[1]:.1f}"
    return tags


def _rank(o: JobOutcome, name: str) -> tuple[float, float]:
    return o.metrics[names.judge_metric(name, "pass_rate")], o.metrics.get(names.judge_metric(name, "mean")) or 0.0


def picture(outcomes: list[JobOutcome], path: Path) -> Path | None:
    """Each evaluator's pass rate with its Wilson 95% interval over the job's judgments: the first
    choice that varies (e.g. persona) as coloured bars, grouped along x by the others (e.g. user
    persona and turns)."""
    done = [o for o in outcomes if o.status == "completed"]
    judged = evaluators(done)
    if not judged:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    keys = varying(done) or ["job"]
    series_key, group_keys = keys[0], keys[1:]

    def value(o: JobOutcome, key: str) -> str:
        return str(o.num) if key == "job" else str(o.choices.get(key))

    series = list(dict.fromkeys(value(o, series_key) for o in done))
    groups = list(dict.fromkeys(" / ".join(value(o, k) for k in group_keys) for o in done))
    width = 0.8 / len(series)
    fig, axes = plt.subplots(
        len(judged), 1, figsize=(max(6.0, 0.9 * len(groups) * len(series) + 2), 2.8 * len(judged)), squeeze=False
    )
    for ax, name in zip(axes[:, 0], judged, strict=True):
        for i, member in enumerate(series):
            xs, rates, errors = [], [], [[], []]  # type: list[float], list[float], list[list[float]]
            for x, group in enumerate(groups):
                match = [
                    o
                    for o in done
                    if value(o, series_key) == member and " / ".join(value(o, k) for k in group_keys) == group
                ]
                rate = match[0].metrics.get(names.judge_metric(name, "pass_rate")) if match else None
                if rate is None:
                    continue
                low, high = wilson95(rate, int(match[0].metrics.get(names.judge_metric(name, "n")) or 0))
                xs.append(x + (i - (len(series) - 1) / 2) * width)
                rates.append(rate)
                errors[0].append(rate - (rate if low is None else low))
                errors[1].append((rate if high is None else high) - rate)
            bars = ax.bar(xs, rates, width * 0.9, yerr=errors, capsize=3, label=member)
            ax.bar_label(bars, labels=[f"{r:.0%}" for r in rates], fontsize=7, padding=2)
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("pass rate")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_xlabel(" / ".join(group_keys), fontsize=8)
        ax.legend(title=series_key, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("pass rate by job, with 95% Wilson intervals", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def survival_rows(o: JobOutcome) -> list[dict[str, Any]]:
    """A job's turns-to-breach curve from its breach.survival.t<k> metrics (none: boundary_holding
    did not judge it)."""
    rows = []
    turn = 1
    while f"breach.survival.t{turn}" in o.metrics:
        rows.append(
            {
                "turn": turn,
                "survival": o.metrics[f"breach.survival.t{turn}"],
                "ci_low": o.metrics.get(f"breach.ci_low.t{turn}"),
                "ci_high": o.metrics.get(f"breach.ci_high.t{turn}"),
            }
        )
        turn += 1
    return rows


def breach_picture(outcomes: list[JobOutcome], path: Path) -> Path | None:
    """The jobs' turns-to-breach curves side by side, labelled by the choices that vary."""
    done = [o for o in outcomes if o.status == "completed" and survival_rows(o)]
    if not done:
        return None
    keys = varying(done)
    return draw({label(o, keys): survival_rows(o) for o in done}, path, "turns to breach by job, 95% intervals")


def write_comparison(outcomes: list[JobOutcome], folder: Path) -> list[Path]:
    """comparison.json, comparison.csv, comparison.png and (when boundary_holding judged)
    comparison_breach.png in the sweep folder."""
    rows = table(outcomes)
    data = folder / "comparison.json"
    data.write_text(json.dumps({"jobs": rows, "extremes": extremes(outcomes)}, indent=2) + "\n", encoding="utf-8")
    sheet = folder / "comparison.csv"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with sheet.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    pictures = [
        picture(outcomes, folder / "comparison.png"),
        breach_picture(outcomes, folder / "comparison_breach.png"),
    ]
    return [data, sheet] + [p for p in pictures if p]
