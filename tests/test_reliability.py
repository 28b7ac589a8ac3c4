"""Nothing lost, nothing mislabelled: bad inputs and faults found by probing, each a clear error or a
counted, logged decision, never a silent loss (see RELIABILITY.md)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest
from hydra.errors import MissingConfigException
from mlflow import MlflowClient

from chareval import PROJECT_ROOT, doctor
from chareval.app import Job
from chareval.cli import check_output_folders, check_override_keys
from chareval.errors import CharevalError, ConfigError, InputError
from chareval.io import hold_run_dir, read_records_jsonl
from chareval.llm import ChatMessage, DiskCache, LLMClient
from chareval.llm.base import load_once
from chareval.llm.providers import local, local_lora
from chareval.report import print_report
from chareval.schemas import Conversation, Evaluation
from chareval.store import names
from chareval.validation import validate_config
from conftest import CONF, DATA, compose_cfg, run_cli, start_cli
from fake_apis import FakeAPI, chat_completion, openai_error

MOCK = ["models=mock", "num_contexts=2", "num_conversations=2", "turns=2"]
CONVERSATIONS = DATA / "conversations.jsonl"


def mock_client(cache: DiskCache | None) -> LLMClient:
    return LLMClient(validate_config(compose_cfg("models=mock")).models, cache=cache)


def ask(client: LLMClient):
    return client.ask("assistant", "system", [ChatMessage(role="user", content="hello")], seed=1)


def test_two_finished_conversations_with_one_id_are_an_error_not_a_silent_dedup(make_job, workdir):
    doubled = workdir / "doubled.jsonl"
    doubled.write_text(CONVERSATIONS.read_text() * 2)  # two runs' files put together
    n = len(CONVERSATIONS.read_text().splitlines())
    for stage in ("prepare", "evaluate"):
        with pytest.raises(InputError, match=rf"records 1 and {n + 1} are both finished conversations with the id"):
            make_job(stage, "models=mock", f"input_file={doubled}").run()


def test_a_retried_conversation_supersedes_its_error(make_job, workdir):
    first = read_records_jsonl(CONVERSATIONS, Conversation)[0]
    retried = workdir / "retried.jsonl"
    failed = first.model_copy(update={"error": "turn 1: overloaded"})
    retried.write_text(failed.model_dump_json() + "\n" + first.model_dump_json() + "\n")
    outputs = make_job("prepare", "models=mock", f"input_file={retried}").run()
    assert len(outputs["finetune"].read_text().splitlines()) == 1


def test_prepare_refuses_to_overwrite_its_input_or_write_into_a_directory(make_job, workdir):
    own = workdir / "conversations.jsonl"
    own.write_text(CONVERSATIONS.read_text())
    with pytest.raises(InputError, match="is the input file"):
        make_job("prepare", f"input_file={own}", f"output_file={own}").run()
    assert own.read_text() == CONVERSATIONS.read_text()
    with pytest.raises(InputError, match="is a directory"):
        make_job("prepare", f"input_file={own}", f"output_file={workdir}").run()


def test_an_unknown_experiment_fails_like_an_unknown_persona():
    with pytest.raises(MissingConfigException, match="experiment/nope"):
        compose_cfg("experiment=nope")


DRAFT = {"title": "T", "scenario": "S", "user_goal": "G", "documents": [{"title": "D", "content": "C"}]}


@pytest.mark.parametrize(
    "stage,failing,expected",
    [("conversations", "every request", "2 of 2 conversations"), ("contexts", "the first context", "1 of 2 contexts")],
)
def test_a_stage_above_its_error_budget_fails_after_writing_everything(make_job, workdir, stage, failing, expected):
    asked_for = []

    def reply(seen, n):
        schema = seen.body.get("response_format", {}).get("json_schema", {}).get("name")
        if schema == "ContextAngles":  # the contexts' plan
            return chat_completion(json.dumps({"angles": ["one angle", "another angle"]}), seen.body["model"])
        asked_for.append(schema)
        if failing == "every request" or len(asked_for) == 1:
            return openai_error(401, "invalid key")
        return chat_completion(json.dumps(DRAFT), seen.body["model"])

    with FakeAPI(reply) as api:
        job = make_job(
            stage,
            *MOCK,
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"context_file={DATA / 'contexts.json'}",
            run_dir=workdir / "run",
        )
        with pytest.raises(
            CharevalError, match=rf"{expected} are errors \(\d+% > {stage}.max_error_fraction=0.25\)"
        ) as err:
            job.run()
    # The provider's own reason and the fix for that reason reach the final message.
    assert "401" in str(err.value) and "invalid key" in str(err.value)
    assert "name its variable in models.providers.openai_compatible.api_key_env" in str(err.value)
    written = "conversations.jsonl" if stage == "conversations" else "contexts_errors.jsonl"
    assert (workdir / "run" / written).is_file()


def test_an_edited_cache_entry_is_a_miss_with_a_warning(tmp_path, caplog):
    cache = DiskCache(tmp_path)
    first = ask(mock_client(cache))
    (entry,) = tmp_path.rglob("*.json")
    stored = json.loads(entry.read_text())
    stored["response"] = stored["response"].replace(first.text, "an answer nobody gave")
    entry.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        again = ask(mock_client(cache))
    assert not again.cached and again.text == first.text
    assert any("does not match its checksum" in r.getMessage() for r in caplog.records)
    assert ask(mock_client(cache)).cached  # rewritten by the fresh call


def test_a_cache_that_cannot_be_written_loses_no_answer(make_job, workdir, caplog):
    blocked = workdir / "cache-is-a-file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        outputs = make_job(
            "conversations", *MOCK, f"context_file={DATA / 'contexts.json'}", f"paths.cache={blocked}"
        ).run()
    conversations = read_records_jsonl(outputs["conversations"], Conversation)
    assert len(conversations) == 2 and all(c.error is None for c in conversations)
    assert sum("cannot write to the cache" in r.getMessage() for r in caplog.records) == 1


def test_a_second_job_on_a_held_run_folder_stops_naming_the_holder(make_job, workdir):
    run_dir = workdir / "run"
    run_dir.mkdir()
    with hold_run_dir(run_dir):
        job = make_job("conversations", *MOCK, f"context_file={DATA / 'contexts.json'}", run_dir=run_dir)
        with pytest.raises(InputError, match=rf"another chareval process \(pid {os.getpid()}\) is writing to"):
            job.run()
    assert not (run_dir / "conversations.jsonl").exists()
    job.run()  # released: the folder is usable again
    assert len(read_records_jsonl(run_dir / "conversations.jsonl", Conversation)) == 2


@pytest.mark.slow  # two processes
def test_two_processes_on_one_run_folder_write_no_duplicate(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from chareval.io import hold_run_dir\n"
            f"with hold_run_dir({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli(
            "stage=conversations",
            *MOCK,
            f"context_file={DATA / 'contexts.json'}",
            f"hydra.run.dir={run_dir}",
            "tracking.enabled=false",
        )
    finally:
        holder.kill()
    assert result.returncode == 2
    assert f"another chareval process (pid {holder.pid}) is writing to {run_dir}" in result.stderr
    assert "Traceback" not in result.stderr and not (run_dir / "conversations.jsonl").exists()


def test_a_resume_with_other_settings_stops_naming_them_and_changes_nothing(make_job, workdir):
    run_dir = workdir / "run"
    args = [*MOCK, f"context_file={DATA / 'contexts.json'}"]
    make_job("conversations", *args, run_dir=run_dir).run()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(InputError, match=r"(?s)other settings.*turns: 2 -> 1.*start a fresh run"):
        make_job("conversations", *args, "turns=1", run_dir=run_dir).run()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    # More items, a bigger error budget or another store are not other records: the rerun resumes.
    more = make_job(
        "conversations", *args, "num_conversations=3", "conversations.max_error_fraction=0.5", run_dir=run_dir
    )
    more.run()
    assert more.log.usage.calls == 2  # only the third conversation's two turns


def test_judges_named_by_file_paths_still_get_their_metrics(make_job, workdir):
    judges = "evaluation.judges=[mock/a,mock//abs/path/judge.gguf]"
    outputs = make_job(
        "evaluate", "models=mock", f"input_file={CONVERSATIONS}", judges, "evaluation.evaluators=[professionalism]"
    ).run()
    summary = json.loads(outputs["summary"].read_text())
    assert "mock/a vs mock//abs/path/judge.gguf" in summary["evaluators"]["professionalism"]["agreement"]
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("chareval").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["agreement.professionalism.mock/a vs mock/_/abs/path/judge.gguf.n"] == 2


def test_job_id_with_the_local_backend_is_a_config_error_without_a_blank_key():
    with pytest.raises(ConfigError, match=r"invalid configuration:\n  job_id=ft-1 follows a Together fine-tuning job"):
        validate_config(compose_cfg("stage=finetune", "job_id=ft-1"))


def test_an_override_of_a_key_that_exists_nowhere_lists_the_keys():
    with pytest.raises(ConfigError, match="unknown key 'foo' in the override foo=1") as err:
        check_override_keys(["-m", "turns=1,3", "foo=1"], CONF)
    assert "turns" in err.value.fix and "persona" in err.value.fix and "contexts" in err.value.fix
    check_override_keys(["+foo=1", "hydra/launcher=joblib", "provider@models.providers.x=local", "contexts.x=1"], CONF)


@pytest.mark.slow  # a subprocess
def test_cli_unknown_key_exits_2_with_the_keys():
    result = run_cli("foo=1")
    assert result.returncode == 2 and "unknown key 'foo'" in result.stderr and "top-level keys:" in result.stderr


def test_an_unreachable_server_is_named_in_the_error(make_job, workdir):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    job = make_job(
        "conversations",
        *MOCK,
        "models=openai_compatible",
        f"models.providers.openai_compatible.base_url={url}",
        "models.retry.max_attempts=2",
        "models.retry.initial_backoff_s=0.01",
        "models.retry.max_backoff_s=0.01",
        f"context_file={DATA / 'contexts.json'}",
    )
    with pytest.raises(CharevalError) as err:
        job.run()
    assert f"at {url}" in str(err.value) and "check that the server at that URL is up" in str(err.value)


def test_a_model_is_loaded_once_when_threads_ask_for_it_together():
    loads = []

    def slow_load(path: str) -> str:
        loads.append(path)
        time.sleep(0.2)  # every thread arrives while the first one is loading
        return f"model from {path}"

    load = load_once(slow_load)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(load, ["a.gguf"] * 8))
    assert loads == ["a.gguf"] and set(results) == {"model from a.gguf"}
    assert load("b.gguf") == "model from b.gguf" and loads == ["a.gguf", "b.gguf"]
    # Both local providers load through it (a bare functools.cache, which has cache_info, does not serialise).
    for loader in (local.load_llama, local_lora.load_adapted):
        assert not hasattr(loader, "cache_info")


@pytest.mark.slow  # a subprocess interrupted with Ctrl-C
def test_the_first_ctrl_c_says_at_once_what_it_waits_for(tmp_path):
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m"), delay_s=4) as api:
        process = start_cli(
            "stage=conversations",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"context_file={DATA / 'contexts.json'}",
            "num_conversations=2",
            "turns=1",
            f"hydra.run.dir={tmp_path / 'run'}",
            "tracking.enabled=false",
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in process.stderr))
        reader.start()
        deadline = time.monotonic() + 60
        while len(api.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        reader.join()
    said = [(t, line) for t, line in lines if "waiting for 2 running item(s)" in line]
    assert said and said[0][0] - interrupted < 2  # at once, not after the 4 s the items still take
    assert "press Ctrl-C again to stop now" in said[0][1]
    # The items it waited for are kept.
    assert len((tmp_path / "run" / "conversations.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow  # a subprocess killed with SIGKILL
def test_a_resume_after_kill_9_closes_the_dead_runs_and_links_to_them(make_job, workdir):
    run_dir = workdir / "run"
    args = ["models=openai_compatible", f"context_file={DATA / 'contexts.json'}", "num_conversations=2", "turns=1"]
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m"), delay_s=30) as api:
        process = start_cli(
            "stage=conversations",
            *args,
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"paths.outputs={workdir / 'outputs'}",
            f"hydra.run.dir={run_dir}",
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()
        process.wait()
    (dead,) = runs_of(workdir)
    assert dead.info.status == "RUNNING"  # nobody could close it
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", "m")) as api:
        make_job(
            "conversations", *args, f"models.providers.openai_compatible.base_url={api.url}/v1", run_dir=run_dir
        ).run()
    old, new = runs_of(workdir)
    assert (
        old.info.run_id == dead.info.run_id and old.info.status == "KILLED" and "killed" in old.data.tags[names.ERROR]
    )
    assert new.info.status == "FINISHED" and new.data.tags[names.RESUMES] == dead.info.run_id


def runs_of(workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name("chareval").experiment_id], order_by=["start_time"])


@pytest.mark.parametrize(
    "store,expected",
    [
        ("closed port", "does not answer"),
        ("corrupt file", "is not a usable SQLite database"),
        ("read-only folder", "cannot write the MLflow store"),
    ],
)
def test_a_store_that_cannot_work_is_one_clear_error_within_seconds(tmp_path, monkeypatch, store, expected):
    if store == "closed port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    elif store == "corrupt file":
        (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "access", lambda path, mode: False)  # root writes anywhere: pretend
        else:
            (tmp_path / "ro").mkdir(mode=0o500)
        uri = f"sqlite:///{tmp_path / 'ro' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    with pytest.raises(CharevalError, match=expected) as err:
        Job(compose_cfg("models=mock", "stage=prepare"), stage="prepare", run_dir=tmp_path / "run")
    assert time.monotonic() - started < 10 and err.value.fix


@pytest.mark.slow  # two processes
def test_two_first_runs_on_a_fresh_store_both_work(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"}
    args = ["stage=prepare", f"input_file={CONVERSATIONS}", "models=mock"]
    processes = [
        start_cli(
            *args,
            f"hydra.run.dir={tmp_path / n}",
            f"paths.outputs={tmp_path / 'out'}",
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in ("a", "b")
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]


@pytest.mark.slow  # a subprocess interrupted while it starts
def test_ctrl_c_while_starting_is_quiet(tmp_path):
    process = start_cli(
        "stage=prepare",
        f"input_file={CONVERSATIONS}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "tracking.enabled=false",
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # the libraries take longer than this to load
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr and "interrupted" in stderr


@pytest.mark.slow  # a subprocess writing to a full file system
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_clear_message(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        (full / "filler").write_bytes(b"x" * 65_000)  # every page of it
        result = run_cli(
            "stage=prepare",
            f"input_file={CONVERSATIONS}",
            f"output_file={full / 'finetune.jsonl'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "tracking.enabled=false",
        )
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No space left on device" in result.stderr and "free space" in result.stderr


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "is empty: it holds no records"),
        (b"\xef\xbb\xbf" + CONVERSATIONS.read_bytes(), "byte-order mark"),
        ("folder", "is a folder"),
    ],
)
def test_an_unusable_input_file_is_named_for_what_it_is(make_job, workdir, content, expected):
    path = workdir / "conversations.jsonl"
    if content == "folder":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        make_job("prepare", f"input_file={path}").run()


def test_a_model_string_that_is_not_provider_slash_model_says_so():
    with pytest.raises(ConfigError, match=r"judge_model='foo': should be provider/model") as err:
        validate_config(compose_cfg("stage=evaluate", "judge_model=foo"))
    assert "pattern" not in str(err.value)


def test_a_key_typed_on_the_command_line_is_refused_before_hydra_saves_it():
    for arg in ("+models.providers.openai_compatible.api_key=sk-SENTINEL", "models.providers.x.api_key=sk-SENTINEL"):
        with pytest.raises(ConfigError, match="would be saved in the run folder") as err:
            check_override_keys([arg], CONF)
        assert "SENTINEL" not in str(err.value)


def test_pass_and_score_cannot_contradict_each_other(make_job, workdir):
    """The judge gives a score; pass/fail is the score against evaluation.pass_threshold. A judge that
    still writes a contradicting `passed` is not listened to."""

    def judge(seen, n):
        score = 10 if "conv-hold" in str(seen.body) or n % 2 == 0 else 1
        answer = {"score": score, "passed": score < 5, "rationale": "r", "evidence_turns": [0], "slip_turn": None}
        return chat_completion(json.dumps(answer), seen.body["model"])

    with FakeAPI(judge) as api:
        outputs = make_job(
            "evaluate",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            f"input_file={CONVERSATIONS}",
            "evaluation.evaluators=[professionalism]",
            "evaluation.pass_threshold=8",
        ).run()
    records = read_records_jsonl(outputs["evaluations"], Evaluation)
    assert {r.score for r in records} == {1, 10}
    assert all(r.passed == (r.score >= 8) for r in records)
    assert "8 or more means the conversation meets the criterion" in api.requests[0].body["messages"][1]["content"]
    assert "passed" not in json.dumps(api.requests[0].body["response_format"])


def test_doctor_names_what_blocks_a_run_and_never_a_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-SENTINEL")
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{s.getsockname()[1]}")
    code = doctor.run(compose_cfg("models=seed", f"paths.root={tmp_path}"))  # no .env there
    out = capsys.readouterr().out
    assert code == 2
    rows = {line.split()[1] if line.startswith("key ") else line.split()[0]: line for line in out.splitlines()}
    assert "ok" in rows["ANTHROPIC_API_KEY"] and "SENTINEL" not in out
    assert "BLOCKS" in rows["OPENROUTER_API_KEY"] and "BLOCKS" in rows["MLflow"] and "does not answer" in rows["MLflow"]
    assert "not used by this config" in out  # no local model in models=seed


def test_doctor_passes_on_a_ready_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert doctor.run(compose_cfg("models=mock", f"paths.outputs={tmp_path / 'outputs'}")) == 0
    assert "BLOCKS" not in capsys.readouterr().out


@pytest.mark.slow  # a subprocess loading the embedded model
def test_cli_doctor_loads_the_embedded_model(tmp_path):
    result = run_cli(script="src/doctor.py", env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local/smollm2-135m-instruct loaded and answered" in result.stdout
    assert not (PROJECT_ROOT / "src" / "outputs").exists()  # it writes no run folder


@pytest.mark.slow  # subprocesses
def test_stage_doctor_is_an_alias_of_the_doctor_command_and_bad_overrides_exit_2(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    alias = run_cli("stage=doctor", "models=mock", f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert alias.returncode == 0, alias.stdout + alias.stderr
    assert "models=mock" in alias.stdout and not (tmp_path / "run").exists()
    bad = run_cli("persona=nobody", script="src/doctor.py", env=env)
    assert bad.returncode == 2 and "persona=nobody" in bad.stdout and "jasmine" in bad.stdout


def test_a_missing_gguf_names_the_key_that_points_at_it():
    models = validate_config(compose_cfg()).models
    with pytest.raises(ConfigError, match="fix the path in the model string"):
        LLMClient(models, cache=None).provider("local//nowhere/model.gguf")
    aliased = validate_config(compose_cfg("+models.providers.local.models.mine=/nowhere/m.gguf")).models
    with pytest.raises(ConfigError, match=r"fix the path in models\.providers\.local\.models\.mine"):
        LLMClient(aliased, cache=None).provider("local/mine")


def test_the_input_of_a_failed_run_is_used_with_a_warning(make_job, workdir, caplog):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = mlflow.set_experiment("chareval")
    client = MlflowClient()
    run = client.create_run(experiment.experiment_id)
    client.log_artifact(run.info.run_id, str(CONVERSATIONS))
    client.set_terminated(run.info.run_id, status="FAILED")
    with caplog.at_level(logging.WARNING):
        make_job("prepare", f"conversations_run={run.info.run_id}").run()
    assert any(f"MLflow run {run.info.run_id} is FAILED" in r.getMessage() for r in caplog.records)


def test_an_output_folder_that_cannot_be_made_is_named_before_hydra_tries(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match=rf"hydra.run.dir={blocked}/run: cannot create that folder"):
        check_output_folders([f"hydra.run.dir={blocked}/run"])
    check_output_folders([f"hydra.run.dir={tmp_path}/fine", "hydra.run.dir=${paths.outputs}/x"])
    assert (tmp_path / "fine").is_dir()


def test_the_printed_mlflow_ui_command_points_at_the_store_in_use(make_job, workdir, capsys):
    job = make_job("prepare", f"input_file={CONVERSATIONS}")
    job.run()
    print_report(job)
    out = capsys.readouterr().out
    assert f"--backend-store-uri sqlite:///{workdir / 'mlruns' / 'mlflow.db'}" in out
    assert f"--default-artifact-root {workdir / 'mlruns' / 'artifacts'}" in out and "make mlflow-ui" not in out
