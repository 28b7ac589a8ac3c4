"""A multirun (`python src/run.py -m ...`): one MLflow parent run with every job's runs under it. A
job that fails is recorded (its runs FAILED with the error as a tag, and its job.json) while the
other jobs still run; at the end the parent run gets the comparison of the jobs, ends FAILED if a
job failed, and the command prints a per-job summary and exits non-zero when one did."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from chareval.io import write_text_atomic
from chareval.schemas import JobOutcome
from chareval.store import names
from chareval.store.runs import (
    INVOCATION_ENV,
    SWEEP_RUN_ENV,
    git_commit,
    resolve_uri,
    use_store,
)
from chareval.sweep_compare import extremes, headline, table, write_comparison

if TYPE_CHECKING:
    from chareval.app import Job

log = logging.getLogger(__name__)
OUTCOME_FILE = "job.json"
# A job refused because another process holds its folder writes here: job.json is that process's.
REFUSED_FILE = "job.refused.json"
# The choices a comparison shows, beside the config-group choices. judge_model= (stage=evaluate's
# one judge) wins over models.judge, as it does in the stage.
SETTINGS = {
    "turns": ("turns",),
    "assistant": ("models.assistant",),
    "user": ("models.user",),
    "judge": ("judge_model", "models.judge"),
}


def _lookup(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def job_choices(cfg: DictConfig, group_choices: dict[str, str], overrides: list[str] | None = None) -> dict[str, str]:
    """What a job was, for the comparison: its config-group choices, the settings above, and every key
    its overrides set, as it was for that job (a swept key must never show another job's value)."""
    choices = {k: v for k, v in group_choices.items() if not k.startswith("hydra/") and v is not None}
    for name, keys in SETTINGS.items():
        value = next((v for v in (_lookup(cfg, k) for k in keys) if v is not None), None)
        if value is not None:
            choices[name] = str(value)
    for override in overrides or []:
        key, sep, value = override.lstrip("+").partition("=")
        covered = key in choices or any(key in keys for keys in SETTINGS.values())
        if sep and not key.startswith(("hydra", "~", "paths.")) and not covered:  # not where files go
            choices[key] = value
    return choices


def record_outcome(
    cfg: DictConfig, job: Job | None, status: str, error: str | None, *, busy_pid: str | None = None
) -> JobOutcome:
    """Write the job's outcome to its run folder. A job that failed before any MLflow run (a bad
    override, a missing key) gets one now, FAILED with the error, so that the sweep run shows it."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    outcome = JobOutcome(
        num=hydra.job.num,
        overrides=list(hydra.overrides.task),
        status=status,
        error=error,
        run_dir=hydra.runtime.output_dir,
        run_id=job.log.top_run_id if job else None,
        choices=job_choices(cfg, dict(hydra.runtime.choices), list(hydra.overrides.task)),
        metrics=(job.log.metrics | {names.COST_USD: job.log.usage.cost_usd}) if job else {},
        sweep=os.environ.get(INVOCATION_ENV),
        busy_pid=busy_pid,
    )
    if outcome.run_id is None and os.environ.get(SWEEP_RUN_ENV):
        outcome = outcome.model_copy(update={"run_id": _failed_job_run(outcome, os.environ[SWEEP_RUN_ENV])})
    name = REFUSED_FILE if busy_pid is not None else OUTCOME_FILE
    write_text_atomic(Path(outcome.run_dir) / name, outcome.model_dump_json(indent=2) + "\n")
    return outcome


def _failed_job_run(outcome: JobOutcome, sweep_run_id: str) -> str | None:
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        sweep = client.get_run(sweep_run_id)
        run = client.create_run(
            sweep.info.experiment_id,
            run_name=f"job {outcome.num} (failed before it started)",
            tags={
                names.PARENT: sweep_run_id,
                names.SWEEP: sweep_run_id,
                names.KIND: "job",
                names.STAGE: outcome.choices.get("stage", "?"),
                names.RUN_DIR: outcome.run_dir,
                names.ERROR: (outcome.error or outcome.status)[:4000],
            }
            | {names.choice(k): v for k, v in outcome.choices.items()},
        )
        client.set_terminated(run.info.run_id, "KILLED" if outcome.status == "interrupted" else "FAILED")
        return run.info.run_id
    except Exception as e:  # noqa: BLE001 (the store itself may be what failed: the job.json still records it)
        log.warning("could not record the failed job in MLflow: %s", e)
        return None


def read_outcomes(sweep_dir: Path, invocation: str | None = None) -> list[JobOutcome]:
    """Each job's outcome from this launch of the sweep (`invocation`): a folder's job.json left by an
    earlier launch (or written since by its workers, still running after their driver was killed)
    is not this launch's outcome, and a refusal is."""
    by_job: dict[str, tuple[float, JobOutcome]] = {}
    for name in (OUTCOME_FILE, REFUSED_FILE):
        for path in Path(sweep_dir).glob(f"*/{name}"):
            outcome = JobOutcome.model_validate_json(path.read_text(encoding="utf-8"))
            if invocation and outcome.sweep not in (invocation, None):  # None: a worker without the environment
                continue
            written = path.stat().st_mtime
            if path.parent.name not in by_job or written > by_job[path.parent.name][0]:
                by_job[path.parent.name] = (written, outcome)
    return sorted((o for _, o in by_job.values()), key=lambda o: o.num)


class SweepCallback(Callback):
    """Creates the sweep's MLflow run before the jobs start (its id reaches them through the
    environment, or by its sweep folder), and closes it with the comparison when they end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        os.environ[INVOCATION_ENV] = uuid.uuid4().hex
        for stale in Path(config.hydra.sweep.dir).glob(f"*/{REFUSED_FILE}"):
            stale.unlink()  # an earlier launch's refusals: this launch tries those jobs again
        if not config.tracking.enabled or config.dry_run:  # a dry run makes no MLflow run
            return
        root = config.paths.root
        experiment_id = use_store(resolve_uri(config.tracking.uri, root), config.tracking.experiment)
        overrides = list(config.hydra.overrides.task)
        killed = close_killed_sweeps(str(config.hydra.sweep.dir))
        run = MlflowClient().create_run(
            experiment_id,
            run_name=f"sweep {Path(config.hydra.sweep.dir).name}",
            tags={
                names.KIND: "sweep",
                names.SWEEP_DIR: str(config.hydra.sweep.dir),
                names.SWEEP_OVERRIDES: " ".join(overrides)[:5000],
                names.GIT_COMMIT: git_commit(root),
            }
            | ({names.RESUMES: ",".join(killed)} if killed else {}),
        )
        os.environ[SWEEP_RUN_ENV] = run.info.run_id
        log.info("MLflow sweep run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.dry_run:
            os.environ.pop(INVOCATION_ENV, None)
            print_plans(sweep_dir)
            return
        outcomes = read_outcomes(sweep_dir, os.environ.pop(INVOCATION_ENV, None))
        failed = [o for o in outcomes if o.status != "completed"]
        files = write_comparison(outcomes, sweep_dir) if outcomes else []
        run_id = os.environ.pop(SWEEP_RUN_ENV, None)
        if run_id:
            _close_sweep_run(run_id, outcomes, files, failed=bool(failed))
        print_summary(outcomes, sweep_dir, files, run_id)
        if failed:
            raise SystemExit(2)  # after every job ran and everything is recorded


def print_plans(sweep_dir: Path) -> None:
    """A dry-run sweep's total: what its jobs would ask and cost (each job printed its own table)."""
    plans = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(sweep_dir.glob(f"*/{names.PLAN}"))]
    calls, requests = sum(p["calls"] for p in plans), sum(p["requests"] for p in plans)
    cost, most = sum(p["cost_usd"] for p in plans), sum(p["max_cost_usd"] for p in plans)
    print(
        f"\nchareval sweep: dry run of {len(plans)} jobs -> {sweep_dir}\n  {calls} model calls, {calls - requests} "
        f"answered by the cache: {requests} requests, about ${cost:.4f} (at most ${most:.4f}); each job's plan.json"
    )


def _close_sweep_run(run_id: str, outcomes: list[JobOutcome], files: list[Path], failed: bool) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for path in files:
        client.log_artifact(run_id, str(path))
    rows = table(outcomes)
    if rows:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        mlflow.log_table(
            {c: [row.get(c) for row in rows] for c in columns}, artifact_file="comparison_table.json", run_id=run_id
        )
    tags = extremes(outcomes) | {
        names.SWEEP_JOBS: str(len(outcomes)),
        names.SWEEP_FAILED_JOBS: str(sum(o.status != "completed" for o in outcomes)),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def close_killed_sweeps(sweep_dir: str) -> list[str]:
    """Sweep runs of this folder still RUNNING: their driver was killed (a sweep rerun in the same
    folder is the only way to launch into it again). Closed as KILLED, like a killed stage run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    folder = sweep_dir.replace("'", "")
    found = client.search_runs(
        ids,
        f"tags.`{names.SWEEP_DIR}` = '{folder}' AND tags.`{names.KIND}` = 'sweep' AND attributes.status = 'RUNNING'",
    )
    for run in found:
        client.set_tag(
            run.info.run_id, names.ERROR, "killed: its driver stopped without closing it; the sweep was rerun"
        )
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in found]


def _error_lines(error: str | None, status: str) -> list[str]:
    """What a failed job's summary shows: the error's message (a config error's key and reason are
    on the lines after "invalid configuration:"), then its fix."""
    lines = [line.strip() for line in (error or status).splitlines() if line.strip()]
    message = [line for line in lines if not line.startswith("fix:")][:4]
    fix = [line for line in lines if line.startswith("fix:")][:1]
    return [f"error: {' '.join(message)}"] + fix


def print_summary(outcomes: list[JobOutcome], sweep_dir: Path, files: list[Path], run_id: str | None) -> None:
    failed = sum(o.status != "completed" for o in outcomes)
    lines = ["", f"chareval sweep: {len(outcomes)} jobs, {failed} failed -> {sweep_dir}"]
    # The overrides every job shares once; each job then shows what makes it differ.
    common = [x for x in outcomes[0].overrides if all(x in o.overrides for o in outcomes)] if outcomes else []
    if common:
        lines.append(f"  every job: {' '.join(common)}")
    for o in outcomes:
        own = [x for x in o.overrides if x not in common]
        lines.append(f"  job {o.num} {o.status:<11} {' '.join(own) or '(no overrides of its own)'}")
        lines.append(f"      run folder: {o.run_dir}" + (f" · MLflow run {o.run_id}" if o.run_id else ""))
        details = [headline(o)] if o.status == "completed" else _error_lines(o.error, o.status)
        lines += [f"      {detail}" for detail in details if detail]
    busy = sorted({o.busy_pid for o in outcomes if o.busy_pid})
    if busy:
        lines.append(
            f"  {sum(bool(o.busy_pid) for o in outcomes)} job(s) refused: their run folders are still being written by"
            f" pid {', '.join(busy)} (workers of an earlier launch of this sweep, still running after their driver"
            f" stopped?). Wait for them to finish or stop them (kill {' '.join(busy)}), then rerun the sweep"
        )
    if files:
        lines.append("  comparison: " + ", ".join(str(p) for p in files))
    if run_id:
        lines.append(
            f"  MLflow sweep run {run_id}: {'FAILED' if failed else 'FINISHED'} (the comparison is among its artifacts)"
        )
    print("\n".join(lines))
