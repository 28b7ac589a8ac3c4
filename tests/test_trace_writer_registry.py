"""A command does not wait for its traces: its writer process outlives it, and a later command on
the same store waits for the writers of ended commands (store/writer_registry.py) before it adds
verdicts to their traces, and not for those of commands still running."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from mlflow import MlflowClient

from chareval import PROJECT_ROOT
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation
from chareval.store.writer_registry import FOLDER, wait_for_ended
from conftest import DATA, run_cli

# A writer's registration, held by a process of its own until its stdin closes (as a writer holds
# it until it has written everything).
HOLDER = """
import sys
from chareval.store.writer_registry import register, unregister
lock = register(sys.argv[1], int(sys.argv[2]))  # held while it is open
print("registered", flush=True)
sys.stdin.read()
unregister(sys.argv[1])
"""


def hold_registration(uri: str, traced_pid: int) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, uri, str(traced_pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(PROJECT_ROOT / "src")},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "registered"
    return holder


def ended_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def store_uri(tmp_path: Path) -> str:
    (tmp_path / "mlruns").mkdir(exist_ok=True)
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def test_a_writer_of_an_ended_command_is_waited_for_until_it_is_done(tmp_path):
    uri = store_uri(tmp_path)
    holder = hold_registration(uri, ended_pid())
    waited: list[float] = []
    waiter = threading.Thread(target=lambda: waited.append(wait_for_ended(uri)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # still writing: the command waits
    holder.stdin.close()  # type: ignore[union-attr]
    holder.wait(timeout=10)
    waiter.join(timeout=10)
    assert not waiter.is_alive() and waited[0] >= 0.5
    assert list((tmp_path / "mlruns" / FOLDER).iterdir()) == []


def test_the_writer_of_a_command_still_running_is_not_waited_for(tmp_path):
    uri = store_uri(tmp_path)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = hold_registration(uri, running.pid)
    try:
        assert wait_for_ended(uri) < 0.5
        assert [p.name for p in (tmp_path / "mlruns" / FOLDER).iterdir()] == [f"{holder.pid}.lock"]
    finally:
        running.kill()
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=10)


def test_the_registration_of_a_killed_writer_is_removed_without_waiting(tmp_path):
    uri = store_uri(tmp_path)
    holder = hold_registration(uri, ended_pid())
    holder.kill()  # kill -9: its lock goes with it, its file stays
    holder.wait(timeout=10)
    assert (tmp_path / "mlruns" / FOLDER / f"{holder.pid}.lock").exists()
    assert wait_for_ended(uri) < 0.5
    assert list((tmp_path / "mlruns" / FOLDER).iterdir()) == []


def run_ok(stage: str, tmp_path: Path, uri: str, *overrides: str) -> None:
    """One stage on the mock provider as a command of its own, in tmp_path/<stage>, on the store at
    `uri` (MLFLOW_TRACKING_URI: it wins over tracking.uri, and other tests' may be set here)."""
    done = run_cli(
        f"stage={stage}",
        "models=mock",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"hydra.run.dir={tmp_path / stage}",
        *overrides,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert done.returncode == 0, done.stderr[-2000:]


def converse_then_evaluate(tmp_path: Path, uri: str, evaluate_uri: str, conversations: int, *evaluators: str) -> None:
    run_ok(
        "conversations",
        tmp_path,
        uri,
        f"context_file={DATA / 'contexts.json'}",
        f"num_conversations={conversations}",
        "turns=3",
    )
    run_ok(
        "evaluate",
        tmp_path,
        evaluate_uri,
        f"input_file={tmp_path / 'conversations' / 'conversations.jsonl'}",
        f"evaluation.evaluators=[{','.join(evaluators)}]",
    )


def test_a_command_after_another_puts_its_verdicts_on_the_traces_the_first_left_to_its_writer(tmp_path):
    uri = store_uri(tmp_path)
    converse_then_evaluate(tmp_path, uri, uri, 4, "professionalism", "grounding")
    wait_for_ended(uri)  # the second command's writer, as the dashboard or any later command waits for it
    client = MlflowClient(uri)
    conversations = read_records_jsonl(tmp_path / "conversations" / "conversations.jsonl", Conversation)
    assert len(conversations) == 4
    for conversation in conversations:
        verdicts = client.get_trace(conversation.trace_id).info.assessments
        assert sorted(a.name for a in verdicts) == ["grounding", "professionalism"]
    assert "cannot attach" not in (tmp_path / "evaluate" / "run.log").read_text()


def test_a_writer_warning_after_its_command_exited_goes_to_the_run_log(tmp_path):
    """Verdicts on conversations traced into another store: the writer finds out when it writes them,
    after the command has exited, and says so in that command's run log."""
    uri = store_uri(tmp_path)
    (tmp_path / "other").mkdir()
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"
    converse_then_evaluate(tmp_path, uri, other, 2, "professionalism")
    wait_for_ended(other)
    log = (tmp_path / "evaluate" / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "cannot attach professionalism feedback" in line]
    assert len(warnings) == 1 and "in another MLflow store" in warnings[0]


class GoneProcess:
    """The writer's stdout once the traced process has exited."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_the_writer_puts_its_warnings_in_the_last_jobs_run_log_once_the_traced_process_is_gone(tmp_path):
    from chareval.store.trace_writer import Store

    store = Store(GoneProcess())  # type: ignore[arg-type]
    store.answer("warn said before any job: nowhere to put it")  # no run log named yet: dropped, no error
    store.take(("log", str(tmp_path / "run.log")))
    store.answer("warn cannot attach feedback, key sk-ant-api03-" + "x" * 40)
    (line,) = (tmp_path / "run.log").read_text().splitlines()
    assert "WARNING" in line and "cannot attach feedback" in line and "after the command had exited" in line
    assert "sk-ant-api03" not in line  # redacted as the command's own log is
