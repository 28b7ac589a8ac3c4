"""An MLflow store that stops working mid-run (a server killed or answering 5xx, a database on a disk
that fills up, a half-created database): exit 2 and one paragraph that says what stopped, where the
work is and how to resume; the records are all there; MLflow's own logging stays quiet below it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DATA, run_cli, start_cli
from fake_apis import FakeAPI, Reply, chat_completion

pytestmark = pytest.mark.slow  # subprocesses, as users run them

ARGS = [f"context_file={DATA / 'contexts.json'}", "num_conversations=2", "turns=3", "stage=conversations"]


def assert_one_paragraph(stderr: str, run_dir=None) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and "conversations:" not in line]
    assert "Traceback" not in stderr and len(lines) <= 6, stderr[-3000:]
    assert "MLflow store" in stderr and "\n  fix: " in stderr
    if run_dir is not None:  # it stopped mid-run: how to resume
        assert "error: the MLflow store" in stderr and f"hydra.run.dir={run_dir}" in stderr


def test_a_store_answering_5xx_is_one_paragraph(tmp_path):
    def store(seen, n):  # healthy when asked, then every request refused
        return (
            Reply(200, {}) if seen.path.startswith("/health") else Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE"})
        )

    run_dir = tmp_path / "run"
    with FakeAPI(store) as server:
        result = run_cli(*ARGS, "models=mock", f"hydra.run.dir={run_dir}", env={"MLFLOW_TRACKING_URI": server.url})
    # What the store answered: MLflow names the status once its retries are spent ("too many 503 error
    # responses") or, when it hands back the last 503 itself (seen once under make test's load), the
    # error code in its body.
    assert result.returncode == 2 and ("503" in result.stderr or "TEMPORARILY_UNAVAILABLE" in result.stderr)
    assert_one_paragraph(result.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real `mlflow server` on a store in `folder`, answering; killed (with its workers) after."""
    port = _free_port()
    folder.mkdir()
    server = subprocess.Popen(
        # One worker process, not MLflow's default four (each imports MLflow: seconds of CPU).
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", str(folder / "art")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers die with it
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield server, f"http://127.0.0.1:{port}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 9)


def test_a_tracking_server_killed_mid_stage_is_one_paragraph_and_the_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    with mlflow_server(tmp_path / "server") as (server, uri):
        with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", seen.body["model"]), delay_s=0.3) as api:
            job = [
                *ARGS,
                "models=openai_compatible",
                f"models.providers.openai_compatible.base_url={api.url}/v1",
                "models.providers.openai_compatible.max_in_flight=1",
                f"hydra.run.dir={run_dir}",
            ]
            first = start_cli(*job, env={"MLFLOW_TRACKING_URI": uri}, stderr=subprocess.PIPE, text=True)
            out = run_dir / "conversations.jsonl"
            deadline = time.monotonic() + 120
            while not (out.exists() and out.read_text().count("\n") >= 1) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(server.pid, 9)  # the server dies mid-stage
            server.wait()
            _, stderr = first.communicate(timeout=300)
            assert first.returncode == 2
            assert_one_paragraph(stderr, run_dir)
            assert out.read_text().count("\n") >= 1  # what finished is on disk
            # The store comes back (here: a local one): the resume finishes the stage.
            again = run_cli(*job, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'local.db'}"})
        assert again.returncode == 0, again.stderr[-2000:]
        assert out.read_text().count("\n") >= 2


def test_once_the_store_fails_recording_the_failure_tries_each_call_once(tmp_path, monkeypatch):
    """A run whose store starts answering 503 mid-run: the call that met it is retried as configured,
    but the calls that record the failure (the error tag, then MLflow's end of the run, which reads the
    run before it sets its status) are tried once each, not retried with back-off; then the retries
    are back for whatever comes next. A proxy in front of a real `mlflow server` counts the requests."""
    import mlflow

    from chareval.store.runs import start_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the retries, without the wait
    state = {"up": True}

    def proxy(seen, n):
        if not state["up"]:
            return Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE"})
        data = None if seen.method == "GET" else json.dumps(seen.body).encode()
        request = urllib.request.Request(uri + seen.path, data=data, method=seen.method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return Reply(answer.status, json.loads(answer.read() or b"{}"))
        except urllib.error.HTTPError as refused:
            return Reply(refused.code, json.loads(refused.read() or b"{}"))

    with mlflow_server(tmp_path / "server") as (_, uri), FakeAPI(proxy) as store:
        mlflow.set_tracking_uri(store.url)
        try:
            mlflow.set_experiment("chareval")
            with pytest.raises(mlflow.exceptions.MlflowException), start_run(True, run_name="r", tags={}) as run:
                state["up"] = False
                dead_from = len(store.requests)
                run.log_metrics({"m": 1.0})
            after = [(seen.method, seen.path.split("?")[0]) for seen in store.requests[dead_from:]]
            assert after == [
                ("POST", "/api/2.0/mlflow/runs/log-batch"),  # the call that met the failure, 2 retries
                ("POST", "/api/2.0/mlflow/runs/log-batch"),
                ("POST", "/api/2.0/mlflow/runs/log-batch"),
                ("POST", "/api/2.0/mlflow/runs/set-tag"),
                ("GET", "/api/2.0/mlflow/runs/get"),  # MLflow ends a run by reading it first: it fails there
            ], after
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
            counted = len(store.requests)
            with pytest.raises(mlflow.exceptions.MlflowException):
                mlflow.MlflowClient().get_experiment_by_name("chareval")
            assert len(store.requests) - counted == 3  # retried again
        finally:
            mlflow.set_tracking_uri(None)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_store_on_a_disk_that_fills_up_is_one_paragraph(tmp_path, blank_mlflow_db):
    full = tmp_path / "full"
    full.mkdir()
    size = blank_mlflow_db.stat().st_size + 256 * 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(full)], check=True)
    run_dir = tmp_path / "run"
    try:
        shutil.copy(blank_mlflow_db, full / "mlflow.db")  # 256 KB left: the run's traces fill them
        command = start_cli(
            *ARGS,
            "models=mock",
            f"hydra.run.dir={run_dir}",
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{full}/mlflow.db"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = command.communicate(timeout=300)
        # Its trace writer finishes too (it used to wait for ever once it could not note itself on the
        # full disk), and leaves no half-made note behind.
        deadline = time.monotonic() + 60
        writer = ["pgrep", "-f", f"chareval.store.trace_writer {command.pid}$"]
        while subprocess.run(writer, capture_output=True).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert subprocess.run(writer, capture_output=True).returncode == 1, "the trace writer is still running"
        assert not list(full.glob(".chareval-trace-writers/*.making"))
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert command.returncode == 2
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 40, stderr[-3000:]
    assert "disk is full" in stderr or "No space left on device" in stderr
    assert f"hydra.run.dir={run_dir}" in stderr


def test_a_half_created_store_is_named_as_such_with_the_fix_not_mlflow_db_upgrade(tmp_path, blank_mlflow_db):
    """Its migrations stopped part-way (a full disk): MLflow itself calls it out of date."""
    import sqlite3

    from chareval.errors import CharevalError
    from chareval.store.runs import use_store

    db = tmp_path / "mlflow.db"
    shutil.copy(blank_mlflow_db, db)
    connection = sqlite3.connect(db)
    connection.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # an early revision
    connection.commit()
    connection.close()
    with pytest.raises(CharevalError, match="half-created MLflow store") as err:
        use_store(f"sqlite:///{db}", "chareval")
    assert f"mv {db} {db}.broken" in err.value.fix and "upgrade" not in err.value.fix
    assert "CREATE TABLE" not in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_store_created_on_a_full_disk_is_removed_and_named(tmp_path):
    from chareval.errors import CharevalError
    from chareval.store.runs import use_store

    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(full)], check=True)
    try:
        with pytest.raises(CharevalError, match="could not create the MLflow store") as err:
            use_store(f"sqlite:///{full / 'mlflow.db'}", "chareval")
        assert not (full / "mlflow.db").exists() and "CREATE TABLE" not in str(err.value)
        assert len(str(err.value).splitlines()) <= 2 and "free space" in err.value.fix
    finally:
        subprocess.run(["umount", "-l", str(full)], check=True)  # lazy: MLflow's engine may hold the file open
