"""What a finished run prints: where its files are and how to look at them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from chareval.store import names
from chareval.store.runs import default_uri

if TYPE_CHECKING:
    from chareval.app import Job


def print_report(job: Job) -> None:
    if job.plan is not None:
        print(describe_plan(job.plan, job.run_dir))
        return
    s = job.settings
    lines = ["", f"chareval {job.stage}: done"]
    lines += [f"  {summary}" for summary in job.log.summaries]
    if job.log.truncated:
        lines.append(f"  {job.log.truncated} model replies stopped at max_tokens (cut off): see the warnings above")
    lines.append(f"  run folder: {job.run_dir}")
    if s.tracking.enabled:
        lines.append(f"  MLflow store: {job.tracking_uri} (experiment '{s.tracking.experiment}')")
        if job.tracking_uri.startswith("sqlite:///"):
            artifacts = Path(job.tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"  # see use_store
            make = "   (or: make mlflow-ui)" if job.tracking_uri == default_uri(s.paths.root) else ""
            lines.append(
                f"  open it: .venv/bin/mlflow ui --backend-store-uri {job.tracking_uri} "
                f"--default-artifact-root {artifacts}{make}"
            )
        lines.append(f"  read transcripts and verdicts: {dashboard_command(job)}")
    print("\n".join(lines))


def describe_plan(plan: dict[str, Any], run_dir: Path) -> str:
    """dry_run=true's table: calls per role and model, what the cache answers, tokens and cost."""
    rows = [("role", "model", "calls", "cached", "input tok", "output tok", "thinking", "est. $", "max $")]
    for line in plan["by_role_and_model"]:
        rows.append(
            (
                line["role"],
                line["model"],
                str(line["calls"]),
                str(line["cache_hits"]),
                f"{line['input_tokens']:,}",
                f"{line['output_tokens']:,}",
                f"{line['thinking_tokens']:,}",
                f"{line['cost_usd']:.4f}" if line["priced"] else "no price",
                f"{line['max_cost_usd']:.4f}" if line["priced"] else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = [
        "  "
        + "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines = ["", f"chareval {plan['stage']}: dry run (no model was called)", *table]
    lines.append(
        f"  {plan['calls']} model calls, {plan['cache_hits']} answered by the cache: {plan['requests']} requests, "
        f"about ${plan['cost_usd']:.4f} (at most ${plan['max_cost_usd']:.4f} if every reply ran to max_tokens)"
    )
    for job in plan["finetune_jobs"]:
        price = (
            "on this machine, free" if job["backend"] == "local_lora" else "billed by the backend, not estimated here"
        )
        lines.append(f"  + a fine-tuning job ({job['backend']}, {job['examples']} examples): {price}")
    if plan["unpriced_models"]:
        lines.append(f"  no price in models.prices for {', '.join(plan['unpriced_models'])} (counted as $0)")
    budget = plan["budget"]
    tokens = plan["input_tokens"] + plan["output_tokens"] + plan["thinking_tokens"]
    if (budget["max_usd"] is not None and plan["cost_usd"] > budget["max_usd"]) or (
        budget["max_tokens"] is not None and tokens > budget["max_tokens"]
    ):
        lines.append(f"  the estimate passes the budget ({budget}): the run would stop part-way, resumable")
    if plan["missing_keys"]:
        lines.append(f"  a real run would stop first: {plan['missing_keys']}")
    lines.append(f"  plan: {run_dir / names.PLAN}   (tokens are estimates: docs/cost-and-budgets.md)")
    return "\n".join(lines)


def dashboard_command(job: Job) -> str:
    """The dashboard on this run's store and registry (overrides only where they differ from the defaults)."""
    s = job.settings
    overrides = []
    if job.tracking_uri != default_uri(s.paths.root):
        overrides.append(f"tracking.uri={job.tracking_uri}")
    if Path(s.paths.registry) != Path(s.paths.root) / "outputs" / "registry" / "finetuned_models.jsonl":
        overrides.append(f"paths.registry={s.paths.registry}")
    if overrides:
        return ".venv/bin/streamlit run dashboard/app.py -- " + " ".join(overrides)
    return ".venv/bin/streamlit run dashboard/app.py   (or: make dashboard)"
