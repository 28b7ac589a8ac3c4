"""MLflow: where runs go, what each stage run records, and the parent run of a sweep."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from chareval.config import is_secret_key
from chareval.errors import CharevalError
from chareval.io import file_sha256
from chareval.secrets import redact_text
from chareval.store import names

log = logging.getLogger(__name__)

SWEEP_RUN_ENV = "CHAREVAL_SWEEP_RUN_ID"
INVOCATION_ENV = "CHAREVAL_SWEEP_INVOCATION"  # which launch of a sweep a job belongs to


# Param values longer than this are logged as a hash (the full text is in the config artifact):
# enough to see in the MLflow UI that a prompt changed between runs.
MAX_PARAM_CHARS = 250


def default_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root) / 'mlruns' / 'mlflow.db'}"


def resolve_uri(configured: str | None, root: str | Path) -> str:
    """MLFLOW_TRACKING_URI beats tracking.uri beats the sqlite store under the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_uri(root)


def use_store(uri: str, experiment: str) -> str:
    """Point MLflow at the store and select the experiment (created if missing). With a sqlite store,
    artifacts go beside the database: <root>/mlruns/artifacts/ for the default one."""
    import mlflow
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    new_store = db is not None and not db.exists()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        # Two first runs at once on a fresh SQLite store would both create its tables ("table metrics
        # already exists"): the first one to take the lock does it, the other finds them made.
        with store_lock(uri):
            client = MlflowClient()
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                location = None
                if uri.startswith("sqlite:///"):
                    # Beside the database (MLflow's own default is ./mlartifacts under the current directory).
                    location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / experiment).as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id
    except Exception as e:  # any store problem: unreachable server, locked or corrupt database
        reason = f"{type(e).__name__}: {_first_line(e)}"  # not the SQL statement that failed
        if db is not None and new_store:  # its tables were being made (on a full disk?): nothing to keep
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
            raise CharevalError(
                f"could not create the MLflow store {db}: {reason}; the half-made file was removed",
                "free space (or fix the folder's permissions) and rerun: the store is made anew",
            ) from None
        if db is not None and half_created(db):
            raise CharevalError(
                f"{db} is a half-created MLflow store (its tables are incomplete and it holds no run; was it made on"
                f" a full disk?): {reason}",
                f"move it aside (mv {db} {db}.broken) and rerun: chareval makes a new store there",
            ) from None
        raise CharevalError(f"cannot use the MLflow store {uri}: {reason}", STORE_FIX) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else ""


# Tables every complete store has, whatever its schema version.
CORE_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags"}


def half_created(db: Path) -> bool:
    """A store whose tables were never all made (core tables missing, no schema version, or a version
    short of this MLflow's: its migrations stopped part-way) and that holds no run. A store that holds
    runs is only old, and `mlflow db upgrade` is the right fix for it."""
    import sqlite3

    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            versions = (
                [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    return runs == 0 and (not CORE_TABLES <= tables or versions != [_get_latest_schema_revision()])


RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
STORE_FIX = "check tracking.uri / MLFLOW_TRACKING_URI, or run with tracking.enabled=false"


def check_store(uri: str) -> None:
    """Fail at once, with one clear message, on a store that cannot work: an MLflow server that
    does not answer within seconds (MLflow itself would retry for minutes), a folder that cannot be
    written, a file that is not an SQLite database."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
        except OSError as e:
            raise CharevalError(
                f"the MLflow server {uri} does not answer: {getattr(e, 'reason', e)}", STORE_FIX
            ) from None
        # Later calls fail in seconds, not minutes, if the server goes away mid-run.
        os.environ.setdefault(RETRIES_ENV, "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    elif uri.startswith("sqlite:///"):
        import sqlite3

        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(db.parent, os.W_OK):
                raise PermissionError(f"{db.parent} is not writable")
            _write_ahead_log(db)
        except OSError as e:
            raise CharevalError(f"cannot write the MLflow store {db}: {e.strerror or e}", STORE_FIX) from None
        except sqlite3.DatabaseError as e:
            raise CharevalError(
                f"the MLflow store {db} is not a usable SQLite database ({e})",
                "move the file aside (a new store is made on the next run) or set tracking.uri to another store",
            ) from None


def check_readable(uri: str) -> None:
    """For readers (the dashboard): an SQLite store file that is not a database, or a half-created
    one, is one clear error; nothing is written."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_file():
        return
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            connection.execute("SELECT name FROM sqlite_master").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as e:
        raise CharevalError(
            f"the MLflow store {db} is not a usable SQLite database ({e})",
            f"move the file aside (mv {db} {db}.broken; the next run makes a new store) or open another store"
            " (tracking.uri=… after --)",
        ) from None
    if half_created(db):
        raise CharevalError(
            f"{db} is a half-created MLflow store (its tables are incomplete and it holds no run)",
            f"move it aside (mv {db} {db}.broken): the next run makes a new store there",
        )


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside an SQLite store while its tables may be created."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(Path(uri.removeprefix("sqlite:///")).with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def find_sweep_run(sweep_dir: str) -> str | None:
    """The running sweep run of a sweep folder, in the current store (for a job whose launcher did
    not pass the environment on, e.g. a remote Ray worker)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    value = str(sweep_dir).replace("'", "")
    found = client.search_runs(
        ids, f"tags.`{names.SWEEP_DIR}` = '{value}' AND attributes.status = 'RUNNING'", max_results=1
    )
    if not found:
        log.warning(
            "no running sweep run for %s in %s: this job's runs will not be nested",
            sweep_dir,
            mlflow.get_tracking_uri(),
        )
        return None
    return found[0].info.run_id


def close_abandoned_runs(run_dir: Path, experiment_id: str) -> list[str]:
    """Runs of this run folder still marked RUNNING: their process was killed (kill -9, a power cut)
    and could not close them, and the caller holds the folder's lock, so none is alive. Each is
    closed as KILLED with the reason; their ids are returned for the resumed runs to link to."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    folder = str(run_dir).replace("'", "")
    found = []
    for condition in (f"= '{folder}'", f"LIKE '{folder}/%'"):  # the job's runs, and the loop's subfolders
        found += client.search_runs(
            [experiment_id], f"tags.`{names.RUN_DIR}` {condition} AND attributes.status = 'RUNNING'"
        )
    for run in found:
        client.set_tag(run.info.run_id, names.ERROR, "killed: its process stopped without closing it; resumed later")
        client.set_terminated(run.info.run_id, status="KILLED")
    if found:
        log.info("closed %d run(s) of %s left RUNNING by a killed process", len(found), run_dir)
    return [run.info.run_id for run in found]


def _write_ahead_log(db: Path) -> None:
    """SQLite in WAL mode: readers (the dashboard, the MLflow UI) never block the jobs of a parallel
    sweep, and writers wait their turn instead of failing with "database is locked". The mode is
    kept in the file: once is enough."""
    import sqlite3

    connection = sqlite3.connect(db, timeout=30)
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def metric_name(name: str) -> str:
    """A name MLflow accepts. Names built from model strings keep them where MLflow allows (letters,
    digits, _ - . / : and spaces, no empty or relative path parts), else get an underscore there:
    `judge.x.local//abs/m.gguf` cannot be a metric name (summary.json keeps the full string)."""
    name = re.sub(r"[^\w.\-/: ]", "_", name)
    parts = name.split("/")
    return "/".join(part if part not in ("", ".", "..") else "_" for part in parts)


def flatten_params(container: Any, prefix: str = "") -> dict[str, str]:
    """Scalars of a nested config as dotted keys. Secrets are never logged; long texts become hashes."""
    out: dict[str, str] = {}
    if isinstance(container, dict):
        for key, value in container.items():
            out.update(flatten_params(value, f"{prefix}{key}."))
        return out
    if isinstance(container, list):
        if all(not isinstance(v, (dict, list)) for v in container):
            return _param(prefix[:-1], ",".join(map(str, container)))
        for i, value in enumerate(container):
            out.update(flatten_params(value, f"{prefix}{i}."))
        return out
    return _param(prefix[:-1], container)


def _param(key: str, value: Any) -> dict[str, str]:
    if is_secret_key(key):
        return {}
    text = "null" if value is None else str(value)
    if len(text) > MAX_PARAM_CHARS:
        text = f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]} ({len(text)} chars)"
    return {key: text}


# Where the exceptions of a store that stopped working come from (MLflow, its HTTP client, its database).
STORE_MODULES = ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3")


def store_culprit(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain that the store raised (None: the store did not fail)."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return next((e for e in chain if type(e).__module__.split(".")[0] in STORE_MODULES), None)


def store_failure(error: BaseException, run_dir: str, resume: str) -> CharevalError | None:
    """A store that stopped working mid-run (a server that died or answers 5xx, a database on a full
    disk) as one message: what stopped, what is safe where, how to resume. None: not the store."""
    culprit = store_culprit(error)
    if culprit is None:
        return None
    import mlflow

    reason = redact_text(str(culprit).strip().splitlines()[0] if str(culprit).strip() else type(culprit).__name__)
    return CharevalError(
        f"the MLflow store {mlflow.get_tracking_uri()} stopped working during the run ({reason[:300]}). Everything"
        f" that finished is written in {run_dir} (its records and run.log); the store may lack this run's last"
        " metrics and traces",
        f"bring the store back (the server up, space on its disk), then {resume}: it picks up what is missing",
    )


def error_text(error: BaseException) -> str:
    """An error as one tag value (MLflow caps tags at 5000 characters)."""
    text = str(error) if isinstance(error, CharevalError) else redact_text(f"{type(error).__name__}: {error}")
    return text[:4000]


def git_commit(root: str | Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class StageRun:
    """The MLflow run of one stage (or a no-op when tracking is off)."""

    def __init__(self, run_id: str | None):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.run_id:
            import mlflow

            mlflow.log_metrics({metric_name(k): float(v) for k, v in metrics.items()})

    def log_metric_at(self, key: str, value: float, step: int) -> None:
        """One point of a curve (e.g. the training loss per step)."""
        if self.run_id:
            import mlflow

            mlflow.log_metric(metric_name(key), float(value), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file, or a folder under its own name."""
        if self.run_id and Path(path).exists():
            import mlflow

            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path or Path(path).name)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        if self.run_id and data and any(data.values()):
            import mlflow

            mlflow.log_table(data=data, artifact_file=artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_input(self, path: Path, *, linked: bool) -> None:
        """A file the stage read, under inputs/. The stage's main input is `linked`: its hash is tagged,
        and so is the hash of each file a stage writes (log_outputs), so runs link up by content
        whether the file came as a path, a run id or from the stage before it in a flow."""
        self.log_artifact(path, artifact_path=names.INPUTS)
        if linked and self.run_id:
            self.set_tags({names.INPUT_SHA: file_sha256(path)})

    def log_outputs(self, outputs: dict[str, Path], metrics: dict[str, float]) -> None:
        """What a stage leaves: each output as an artifact with its hash as a tag, and its metrics."""
        for name, path in outputs.items():
            self.log_artifact(path)
            if self.run_id and path.is_file():
                self.set_tags({names.output_sha(name): file_sha256(path)})
        self.log_metrics(metrics)


@contextmanager
def start_run(
    enabled: bool,
    *,
    run_name: str,
    tags: dict[str, Any],
    params: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[StageRun]:
    """An MLflow run, nested under the active run or `parent_run_id`. A failure inside marks it
    FAILED (KILLED on Ctrl-C), with the error as the tag chareval.error, and still propagates."""
    if not enabled:
        yield StageRun(None)
        return
    import mlflow

    nested = mlflow.active_run() is not None
    retries = os.environ.get(RETRIES_ENV)
    try:
        with mlflow.start_run(
            run_name=run_name,
            nested=nested,
            parent_run_id=None if nested else parent_run_id,
            tags={k: str(v) for k, v in tags.items()},
        ) as run:
            if params:
                items = list(params.items())
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    mlflow.log_params(dict(items[i : i + 100]))
            try:
                yield StageRun(run.info.run_id)
            except KeyboardInterrupt:
                mlflow.set_tag(names.ERROR, "interrupted")
                raise
            except Exception as e:
                # Recording the failure is calls to the store (this tag; MLflow's end of the run, which
                # reads the run before it sets its status). Where the store is what failed (a server
                # that died), MLflow's retries and their back-off made a user wait ~15 s for the
                # message: these calls get one try each.
                if store_culprit(e) is not None:
                    os.environ[RETRIES_ENV] = "0"
                mlflow.set_tag(names.ERROR, error_text(e))
                raise
    finally:  # the retries as they were for whatever runs next (a sweep's next job)
        if retries is None:
            os.environ.pop(RETRIES_ENV, None)
        else:
            os.environ[RETRIES_ENV] = retries


def resolved_yaml(cfg: DictConfig) -> str:
    """The composed config without the hydra node, interpolations resolved."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)  # a DictConfig gives a dict
    container.pop("hydra", None)
    return OmegaConf.to_yaml(OmegaConf.create(redact(container)))


def redact(container: Any, prefix: str = "") -> Any:
    """A copy with the value of every secret-looking key replaced."""
    if isinstance(container, dict):
        return {
            k: "***" if is_secret_key(f"{prefix}{k}") and v is not None else redact(v, f"{prefix}{k}.")
            for k, v in container.items()
        }
    if isinstance(container, list):
        return [redact(v, prefix) for v in container]
    return container
