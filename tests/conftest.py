"""Shared fixtures: composing the real conf/, isolated output and MLflow folders per test,
and tiny generation sizes so the real embedded model answers in seconds."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from chareval import PROJECT_ROOT
from chareval.app import Job
from chareval.config import register_resolvers

CONF = PROJECT_ROOT / "conf"
DATA = Path(__file__).parent / "data"
# The hand-labelled holds and slips stage=judge_check reads by default (shipped with the package).
LABELLED = PROJECT_ROOT / "src" / "chareval" / "data" / "judge_validation.jsonl"
# Short replies keep the local model fast; contexts need room for a complete JSON object.
TINY = [
    "models.generation.assistant.max_tokens=24",
    "models.generation.user.max_tokens=24",
    "num_contexts=2",
    "num_conversations=2",
    "turns=3",
]
# The pipeline's first three stages: the fine-tuning and judging stages have tests of their own.
FIRST_STAGES = "pipeline.stages=[contexts,conversations,prepare]"

# The embedded model converted for transformers (chareval.tuned.hf.converted, ~10 s to make) is shared by the
# tests that fine-tune (and the dashboard's store), through a link in each test's cache folder; keyed
# by the GGUF's checksum, so it is never stale. The embedded benchmark's test times a fresh one.
SHARED_HF_MODELS = Path(tempfile.gettempdir()) / "chareval-tests" / "hf_models"
# Its weights re-encoded for llama.cpp (models.providers.local.weights, 145 MB): one copy for every
# test and the subprocesses they start, not one per test folder.
os.environ.setdefault("CHAREVAL_GGUF_CACHE", str(Path(tempfile.gettempdir()) / "chareval-tests" / "gguf"))

register_resolvers()
# The benchmarks' modules (fake_llm, embedded) for the tests of the benchmarks; after the project's
# folders, so that benchmarks/dashboard.py does not hide the dashboard package.
sys.path.append(str(PROJECT_ROOT / "benchmarks"))


def pytest_configure(config):
    """Under pytest-xdist, each worker runs on cores of its own (llama.cpp and torch size their
    thread pools by the cores a process may use): two workers' threads spinning on the same cores
    cost more than they gain."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if count <= len(cpus):
            share, index = len(cpus) // count, int(worker.removeprefix("gw"))
            os.sched_setaffinity(0, cpus[index * share : (index + 1) * share])


# Modules that share a session fixture too costly to make twice: under xdist they run on one worker.
SHARED_WORKER = {"tests/test_dashboard_browser.py": "tests/test_dashboard.py"}  # the dashboard's store


def pytest_xdist_make_scheduler(config, log):
    """A module's tests on one worker, so that its module-scoped fixtures are made once (xdist's own
    loadgroup does not group with pytest 9 here: its nodeid suffix is lost)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    # The modules in the order of the collection (below), not xdist's default of the most tests first.
    config.option.loadscopereorder = False
    return ByModule(config, log)


def scope_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return SHARED_WORKER.get(module, module)


# Seconds the slowest modules took on one of two workers (pytest -n auto on 2 cores, 2026-12-07,
# the browser's test counted with the dashboard's): handed out longest first, so that no long module
# starts last and runs alone. A stale figure only costs time.
MODULE_SECONDS = {
    "tests/test_dashboard.py": 211,
    "tests/test_finetune_local.py": 207,
    "tests/test_sweeps.py": 196,
    "tests/test_embedded_lora.py": 175,
    "tests/test_throughput.py": 121,
    "tests/test_reliability.py": 92,
    "tests/test_tracking.py": 87,
    "tests/test_store_faults.py": 82,
    "tests/test_trace_faults.py": 75,
    "tests/test_genai_tracing.py": 74,
    "tests/test_evaluate.py": 71,
    "tests/test_cost.py": 62,
    "tests/test_reproducibility.py": 61,
    "tests/test_stages.py": 49,
    "tests/test_trace_writer_registry.py": 47,
    "tests/test_hosted_pipeline.py": 46,
    "tests/test_repair.py": 37,
    "tests/test_cli.py": 32,
    "tests/test_resume.py": 31,
    "tests/test_secrets.py": 30,
    "tests/test_local_llm.py": 29,
}


def pytest_collection_modifyitems(config, items):
    """The longest modules first (MODULE_SECONDS), then the other modules with slow tests, so that
    the fast ones fill in at the end instead of one long module running alone on one worker."""
    slow = {item.module for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (-MODULE_SECONDS.get(scope_of(item.nodeid), 0), item.module not in slow))


def llama_log_probs(gguf: Path | str, ids: list[int], lora: str | None = None):
    """llama.cpp's next-token log-probabilities (a torch tensor) at every position of `ids`, in a
    fresh context of `gguf` (with a LoRA adapter on it)."""
    import torch
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=512, logits_all=True, lora_path=lora, verbose=False)
    llm.eval(ids)
    scores = torch.tensor(llm.scores[: len(ids)])
    llm.close()
    return torch.log_softmax(scores, -1)


def share_hf_models(outputs: Path) -> None:
    SHARED_HF_MODELS.mkdir(parents=True, exist_ok=True)
    link = outputs / "cache" / "hf_models"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(SHARED_HF_MODELS, target_is_directory=True)


@pytest.fixture(scope="session")
def blank_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow store with its tables made. Each test's store starts as a copy: making the tables
    takes MLflow about a second and a half per store."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("blank_store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, blank_mlflow_db) -> Path:
    """Outputs, cache and the MLflow store of one test, all under tmp_path."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(blank_mlflow_db, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path


def compose_cfg(*overrides: str) -> DictConfig:
    """The config as src/run.py composes it (a copy: tests may change it)."""
    return copy.deepcopy(_composed(overrides))


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    # Hydra takes about 0.2 s a composition; many tests compose the same overrides.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def shared_hf_models(workdir) -> None:
    """For a test that fine-tunes on the embedded model in its workdir."""
    share_hf_models(workdir / "outputs")


@pytest.fixture
def make_job(workdir):
    """Build a Job for a stage on the composed config, writing under the test's folder."""

    def build(stage: str, *overrides: str, run_dir: Path | None = None) -> Job:
        cfg = compose_cfg(f"stage={stage}", f"paths.outputs={workdir / 'outputs'}", *overrides)
        return Job(cfg, stage=stage, run_dir=run_dir or workdir / "outputs" / stage, choices={"stage": stage})

    return build


def run_job_in(tmp: Path, stage: str, *overrides: str, run_dir: str = "run") -> tuple[Job, dict[str, Path]]:
    """Run a stage once with its outputs and MLflow store under `tmp` (for module-scoped fixtures,
    which cannot use monkeypatch)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    share_hf_models(tmp / "outputs")
    try:
        cfg = compose_cfg(f"stage={stage}", f"paths.outputs={tmp / 'outputs'}", *overrides)
        job = Job(cfg, stage=stage, run_dir=tmp / run_dir, choices={"stage": stage})
        return job, job.run()
    finally:
        if previous is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def start_cli(*args: str, env: dict | None = None, **options) -> subprocess.Popen:
    """src/run.py started in a subprocess, for tests that signal or kill it while it runs."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "src" / "run.py"), *args], env={**os.environ, **(env or {})}, **options
    )


def run_cli(
    *args: str, cwd: Path = PROJECT_ROOT, env: dict | None = None, timeout: int = 600, script: str = "src/run.py"
) -> subprocess.CompletedProcess:
    """src/run.py (or another of the project's scripts) in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def dashboard_store(tmp_path_factory):
    """The real store the dashboard's tests read (see tests/dashboard_store.py); built once a session,
    or kept in CHAREVAL_TEST_STORE (a folder) between sessions while working on the dashboard."""
    from dashboard_store import build, load, save

    kept = os.environ.get("CHAREVAL_TEST_STORE")
    if kept and (Path(kept) / "store.json").is_file():
        return load(Path(kept))
    store = build(Path(kept) if kept else tmp_path_factory.mktemp("dashboard_store"))
    save(store)
    return store
