"""stage=gate: a regression gate for CI. The candidate's verdicts against a baseline's, per evaluator:
both pass rates, the difference with its interval, the test (exact McNemar when they judged the same
contexts, else two independent proportions) and a verdict. Exit 0 when no evaluator is significantly
worse, 1 when one is (naming it), 2 on bad input.

    python src/run.py stage=gate baseline=<evaluations.jsonl | evaluate run id> candidate=<...>
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from chareval.config import GateSettings
from chareval.errors import ConfigError, InputError
from chareval.evaluators import compare
from chareval.io import latest_by_id, read_records_jsonl, write_text_atomic
from chareval.schemas import Evaluation
from chareval.stages.base import STAGES, Stage, StageContext, StageResult
from chareval.store import names
from chareval.store.read import fetch_run_artifact

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{32}")
EXAMPLE = "e.g. baseline=outputs/runs/<date>/<time>_evaluate/evaluations.jsonl, or the run id of an evaluate run"


def locate(ctx: StageContext, key: str) -> tuple[Path, str]:
    """baseline= / candidate=: an evaluations.jsonl, a run folder holding one, or an evaluate run's id."""
    value = getattr(ctx.settings, key)
    if not value:
        raise ConfigError(f"stage=gate needs {key}=<evaluations.jsonl or evaluate run id>", EXAMPLE)
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / names.EVALUATIONS
        if not path.is_file():
            raise InputError(
                f"{key}={value} is a folder with no evaluations.jsonl", f"pass an evaluate run's file: {EXAMPLE}"
            )
    if path.is_file():
        return path.resolve(), str(path)
    if RUN_ID.fullmatch(value):
        where = ctx.run_dir / "inputs" / key
        return fetch_run_artifact(value, names.EVALUATIONS, where, ctx.settings.tracking.enabled), f"run {value}"
    raise InputError(f"{key}={value}: no such file, and not an MLflow run id", EXAMPLE)


def verdicts(path: Path, key: str) -> list[Evaluation]:
    records = latest_by_id(read_records_jsonl(path, Evaluation))
    if not records:
        raise InputError(f"{key}: {path} holds no verdicts", "point it at the evaluations.jsonl of an evaluate run")
    return records


def judge_gate(result: dict[str, Any], knobs: GateSettings) -> tuple[str, str]:
    """pass, fail or better, and why."""
    diff, p = result["pass_diff"], result["pass_p_value"]
    points = -100 * diff
    if diff < 0 and p is not None and p < knobs.alpha:
        return "fail", f"pass rate {points:.1f} points lower, p={p:.2g} < alpha={knobs.alpha}"
    if knobs.max_drop is not None and points > knobs.max_drop:
        return "fail", f"pass rate {points:.1f} points lower, more than gate.max_drop={knobs.max_drop:g}"
    if diff > 0 and p is not None and p < knobs.alpha:
        return "better", f"pass rate {-points:.1f} points higher, p={p:.2g}"
    return "pass", "no significant drop" if diff < 0 else "no drop"


def run(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    knobs = ctx.knobs("gate", GateSettings)
    sides = {}
    for key in ("baseline", "candidate"):
        path, described = locate(ctx, key)
        ctx.mlflow.log_artifact(path, artifact_path=f"inputs/{key}")
        sides[key] = (verdicts(path, key), described)
    (baseline, base_from), (candidate, cand_from) = sides["baseline"], sides["candidate"]
    names_b = sorted({r.evaluator for r in baseline})
    names_c = sorted({r.evaluator for r in candidate})
    common = [n for n in names_b if n in names_c]
    if not common:
        raise InputError(
            f"the baseline and the candidate have no evaluator in common "
            f"(baseline: {', '.join(names_b)}; candidate: {', '.join(names_c)})",
            "judge both with the same evaluators (evaluation.evaluators)",
        )
    left = sorted(set(names_b) ^ set(names_c))
    if left:
        log.warning("not compared (judged on one side only): %s", ", ".join(left))
    report: dict[str, Any] = {}
    for name in common:
        result = compare.compare(baseline, candidate, name)
        if not result["n_baseline"] or not result["n_candidate"]:
            empty = "baseline" if not result["n_baseline"] else "candidate"
            raise InputError(
                f"the {empty} has no valid verdict on {name} (every judgment of it is an error)",
                "rerun its evaluate stage (a rerun retries errored judgments)",
            )
        result["verdict"], result["reason"] = judge_gate(result, knobs)
        report[name] = result
    failed = [n for n, r in report.items() if r["verdict"] == "fail"]
    gate = {
        "verdict": "fail" if failed else "pass",
        "failed": failed,
        "alpha": knobs.alpha,
        "max_drop": knobs.max_drop,
        "baseline": base_from,
        "candidate": cand_from,
        "not_compared": left,
        "evaluators": report,
    }
    out = ctx.run_dir / names.GATE
    write_text_atomic(out, json.dumps(gate, indent=2) + "\n")
    if ctx.mlflow.run_id:
        ctx.mlflow.set_tags({names.GATE_VERDICT: gate["verdict"]})
    metrics = {"gate.failed": float(len(failed))}
    for name, r in report.items():
        for key in ("baseline_pass_rate", "candidate_pass_rate", "pass_diff", "pass_p_value"):
            if r[key] is not None:
                metrics[f"gate.{name}.{key}"] = float(r[key])
    verdict = (
        "gate FAILED: " + "; ".join(f"{n} ({report[n]['reason']})" for n in failed)
        if failed
        else f"gate passed: no evaluator significantly worse (alpha={knobs.alpha})"
    )
    return StageResult(
        outputs={"gate": out},
        metrics=metrics,
        summary="\n  ".join([*table(report), f"{verdict} -> {out}"]),
        exit_code=1 if failed else 0,
        verdict=verdict if failed else None,
    )


def table(report: dict[str, dict[str, Any]]) -> list[str]:
    """The printed table: one row per evaluator."""
    rows = [("evaluator", "baseline", "candidate", "diff [95% CI]", "test", "p", "verdict")]
    for name, r in report.items():
        interval = (
            f" [{100 * r['pass_ci_low']:+.1f}, {100 * r['pass_ci_high']:+.1f}]" if r["pass_ci_low"] is not None else ""
        )
        n = f"n={r['n']} pairs" if r["test"] == "paired" else f"n={r['n_baseline']}/{r['n_candidate']}"
        rows.append(
            (
                name,
                f"{r['baseline_pass_rate']:.0%}",
                f"{r['candidate_pass_rate']:.0%}",
                f"{100 * r['pass_diff']:+.1f} pts{interval}",
                f"{r['pass_test']}, {n}",
                f"{r['pass_p_value']:.2g}" if r["pass_p_value"] is not None else "-",
                r["verdict"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


STAGE = STAGES.register(
    "gate",
    Stage(  # its inputs are baseline= and candidate= (files or evaluate run ids)
        run,
        writes=(names.GATE,),
        knobs=("gate", GateSettings),
    ),
)
