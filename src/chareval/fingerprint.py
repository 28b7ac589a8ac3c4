"""What a run folder's records were made with. A rerun in the same folder resumes only with the same
settings: a changed `turns`, model or persona would mix records of two configs under one config.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chareval.config import AppConfig
from chareval.errors import InputError
from chareval.io import write_text_atomic
from chareval.store.runs import flatten_params, redact

FILE = "fingerprint.json"
# Settings that do not change what a record holds: where files go, how runs are tracked, caching,
# how many items there are (a rerun may ask for more), where a provider is reached and how hard
# (endpoint, concurrency, retries), error budgets, polling; the theme's name (only its texts are used: a
# run folder made before themes had names still resumes).
NOT_IN_RECORDS = re.compile(
    r"^(paths|tracking|budget|plan)\.|^(cache|dry_run|num_contexts|num_conversations|job_id|output_file|theme\.name)$|^models\.retry\."
    r"|\.(max_in_flight|base_url|api_key_env)$|max_error_fraction$|^finetune\.(wait|poll_interval_s)$"
)


def fingerprint(settings: AppConfig) -> dict[str, str]:
    params = flatten_params(redact(settings.model_dump(mode="json")))
    return {key: value for key, value in sorted(params.items()) if not NOT_IN_RECORDS.search(key)}


# The files of the run folder that are not records: a folder holding only these resumes nothing, so
# it refuses nothing (a first run that failed on a bad input leaves them behind).
BOOKKEEPING = {FILE, "run.log", "config.yaml", ".chareval.lock", "job.json", "plan.json"}
BOOKKEEPING_DIRS = {".hydra", ".chareval"}
# Hydra writes these at the start of every run, before chareval can look at the folder; a refused
# resume puts back the ones the folder's records were made with (kept here when they were accepted).
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
ACCEPTED_HYDRA = Path(".chareval") / "hydra"


def has_records(run_dir: Path) -> bool:
    for path in Path(run_dir).rglob("*"):
        relative = path.relative_to(run_dir)
        if relative.parts[0] in BOOKKEEPING_DIRS or path.name in BOOKKEEPING:
            continue
        if path.is_file() and path.stat().st_size > 0:
            return True
    return False


def _copy_hydra_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (source / name).is_file():
            write_text_atomic(target / name, (source / name).read_text(encoding="utf-8"))


def check_or_record(run_dir: Path, settings: AppConfig) -> None:
    """The first run of a folder records its fingerprint; a later run must match it while the folder
    holds records. A refused run leaves the folder as it was, Hydra's files included."""
    run_dir = Path(run_dir)
    path = run_dir / FILE
    current = fingerprint(settings)
    if not path.is_file() or not has_records(run_dir):
        write_text_atomic(path, json.dumps(current, indent=1) + "\n")
        _copy_hydra_files(run_dir / ".hydra", run_dir / ACCEPTED_HYDRA)
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{path} is unreadable", f"delete it to resume {run_dir} with the current settings") from None
    changed = sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))
    if changed:
        _copy_hydra_files(run_dir / ACCEPTED_HYDRA, run_dir / ".hydra")
        shown = "; ".join(
            f"{key}: {recorded.get(key, '(unset)')} -> {current.get(key, '(unset)')}" for key in changed[:8]
        )
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise InputError(
            f"{run_dir} holds records made with other settings, which a resume would mix with these: {shown}{more}",
            "start a fresh run (leave out hydra.run.dir, or point it at a new folder), or rerun with the "
            "folder's own settings (its config.yaml)",
        )
    _copy_hydra_files(run_dir / ".hydra", run_dir / ACCEPTED_HYDRA)
