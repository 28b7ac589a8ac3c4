"""What a finished run prints: where its files are and how to look at them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chareval.app import Job


def print_report(job: Job, outputs: dict[str, Path]) -> None:
    s = job.settings
    lines = ["", f"chareval {job.stage}: done"]
    lines += [f"  {summary}" for summary in job.summaries]
    lines.append(f"  run folder: {job.run_dir}")
    if s.tracking.enabled:
        lines.append(f"  MLflow store: {job.tracking_uri} (experiment '{s.tracking.experiment}')")
        if job.tracking_uri.startswith("sqlite:///"):
            root = Path(s.paths.root)
            lines.append(
                f"  open it: .venv/bin/mlflow ui --backend-store-uri {job.tracking_uri} "
                f"--default-artifact-root {root / 'mlruns' / 'artifacts'}   (or: make mlflow-ui)"
            )
    print("\n".join(lines))
