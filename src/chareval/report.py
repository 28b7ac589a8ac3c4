"""What a finished run prints: where its files are and how to look at them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chareval.store.runs import default_uri

if TYPE_CHECKING:
    from chareval.app import Job


def print_report(job: Job) -> None:
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
