"""How long a boundary holds: turns-to-breach as a survival curve, and pass^k.

Time is counted in assistant turns: turn k is the assistant's k-th reply (message turn 2k-2). A
conversation whose boundary_holding verdict fails breaks at its slip (the earliest slip turn a failing
judgment names; none named: its last reply); one that passes is censored at its last reply: it held
as long as it was watched, no longer is known. The Kaplan-Meier estimate and its 95% interval
(Greenwood's variance on the log(-log) scale) come from lifelines. pass^k (tau-bench) is the chance
that k conversations of one context all hold: C(held, k) / C(n, k) per context, averaged."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chareval.schemas import Conversation


@dataclass(frozen=True)
class Outcome:
    """The boundary_holding verdict of one conversation over its judgments."""

    passed: bool
    slip_turn: int | None  # a message turn


@dataclass(frozen=True)
class BreachTime:
    conversation_id: str
    group: str  # persona × user persona × user strategy
    context: str
    turns: int  # assistant turns until the breach, or watched when it held
    broke: bool
    slip_named: bool = True  # a breach whose turn the judges named (else: counted at the last reply)


def group_of(c: Conversation) -> str:
    return f"{c.assistant_persona} × {c.user_persona} × {c.user_strategy}"


def breach_times(conversations: Sequence[Conversation], outcomes: dict[str, Outcome]) -> list[BreachTime]:
    """One time per judged conversation with at least one assistant reply."""
    by_content = all(c.context_sha256 for c in conversations)  # ids like ctx-001 repeat across runs
    times = []
    for c in conversations:
        outcome = outcomes.get(c.id)
        replies = [m.turn for m in c.messages if m.role == "assistant"]
        if outcome is None or not replies:
            continue
        context = (c.context_sha256 or "") if by_content else c.context_id
        if outcome.passed:
            times.append(BreachTime(c.id, group_of(c), context, len(replies), False))
        elif outcome.slip_turn in replies:
            times.append(BreachTime(c.id, group_of(c), context, replies.index(outcome.slip_turn) + 1, True))
        else:
            times.append(BreachTime(c.id, group_of(c), context, len(replies), True, slip_named=False))
    return times


def kaplan_meier(turns: Sequence[int], broke: Sequence[bool], horizon: int) -> dict[str, Any]:
    """The survival at each assistant turn 1..horizon with the number still at risk and the 95%
    interval, and the median turns-to-breach (None while the curve stays above one half)."""
    from lifelines import KaplanMeierFitter  # imported here: lifelines takes a second to load

    fitted = KaplanMeierFitter().fit(list(turns), list(broke), timeline=range(0, horizon + 1), alpha=0.05)
    survival = fitted.survival_function_.iloc[:, 0]
    bounds = fitted.confidence_interval_
    rows = []
    for t in range(1, horizon + 1):
        low, high = (float(v) for v in bounds.loc[float(t)])
        rows.append(
            {
                "turn": t,
                "survival": float(survival.loc[float(t)]),
                "at_risk": sum(1 for d in turns if d >= t),
                "ci_low": None if math.isnan(low) else low,
                "ci_high": None if math.isnan(high) else high,
            }
        )
    median = float(fitted.median_survival_time_)
    return {"survival": rows, "median_turn": None if math.isinf(median) else median}


def pass_hat_k(held_by_context: dict[str, list[bool]]) -> dict[int, float]:
    """pass^k for k = 1 .. the fewest conversations any context has."""
    if not held_by_context:
        return {}
    most = min(len(v) for v in held_by_context.values())
    result = {}
    for k in range(1, most + 1):
        shares = [math.comb(sum(v), k) / math.comb(len(v), k) for v in held_by_context.values()]
        result[k] = sum(shares) / len(shares)
    return result


def curve(times: Sequence[BreachTime]) -> dict[str, Any]:
    """breach_curve.json's content for one group of times."""
    horizon = max(t.turns for t in times)
    held: dict[str, list[bool]] = defaultdict(list)
    for t in times:
        held[t.context].append(not t.broke)
    return {
        "n": len(times),
        "breaches": sum(1 for t in times if t.broke),
        "censored": sum(1 for t in times if not t.broke),
        "breaches_without_slip_turn": sum(1 for t in times if t.broke and not t.slip_named),
        "contexts": len(held),
        **kaplan_meier([t.turns for t in times], [t.broke for t in times], horizon),
        "pass_hat_k": {str(k): v for k, v in pass_hat_k(held).items()},
        "conversations": [
            {"id": t.conversation_id, "turns": t.turns, "broke": t.broke, "context": t.context} for t in times
        ],
    }


def breach_curve(times: Sequence[BreachTime]) -> dict[str, Any]:
    """breach_curve.json's content for these times (at least one): every conversation together
    (`all`, what the run's metrics report) and each group apart."""
    groups: dict[str, list[BreachTime]] = defaultdict(list)
    for t in times:
        groups[t.group].append(t)
    return {
        "unit": "assistant turn (turn k = the assistant's k-th reply)",
        "all": curve(times),
        "groups": {name: curve(members) for name, members in sorted(groups.items())},
    }


def metrics(result: dict[str, Any]) -> dict[str, float]:
    """breach.* and pass_hat_k.* of the whole run: per-turn survival as breach.survival.t<k>, so that a
    sweep's jobs draw side by side."""
    pooled = result["all"]
    out: dict[str, float] = {
        "breach.n": pooled["n"],
        "breach.breaches": pooled["breaches"],
        "breach.survival_end": pooled["survival"][-1]["survival"],
    }
    if pooled["median_turn"] is not None:
        out["breach.median_turn"] = pooled["median_turn"]
    for row in pooled["survival"]:
        t = row["turn"]
        out[f"breach.survival.t{t}"] = row["survival"]
        out[f"breach.at_risk.t{t}"] = row["at_risk"]
        for bound in ("ci_low", "ci_high"):
            if row[bound] is not None:
                out[f"breach.{bound}.t{t}"] = row[bound]
    out |= {f"pass_hat_k.{k}": v for k, v in pooled["pass_hat_k"].items()}
    return out


def draw(curves: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """Step curves with their 95% bands, one per label (a group, or a sweep's job)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for label, rows in curves.items():
        turns = [0] + [r["turn"] for r in rows]
        survival = [1.0] + [r["survival"] for r in rows]
        low = [1.0] + [r["ci_low"] if r["ci_low"] is not None else r["survival"] for r in rows]
        high = [1.0] + [r["ci_high"] if r["ci_high"] is not None else r["survival"] for r in rows]
        (line,) = ax.step(turns, survival, where="post", label=label, marker="o", markersize=3)
        ax.fill_between(turns, low, high, step="post", alpha=0.15, color=line.get_color())
    ax.set_ylim(0, 1.05)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("assistant turn")
    ax.set_ylabel("boundary held (Kaplan-Meier)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
