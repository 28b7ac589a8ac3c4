"""What MLflow holds after runs, read back with MlflowClient; sweeps as parent + children."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chareval.io import file_sha256
from chareval.store.runs import flatten_params, redact
from conftest import DATA, FIRST_STAGES, TINY, run_cli


def runs_by_name(uri: str, experiment: str = "chareval") -> dict[str, list]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        out.setdefault(
            run.data.tags["chareval.stage"] if "chareval.stage" in run.data.tags else run.data.tags["chareval.kind"], []
        ).append(run)
    return out


@pytest.mark.slow  # the embedded model
def test_stage_run_logs_params_tags_artifacts_metrics(make_job, workdir):
    job = make_job("conversations", f"context_file={DATA / 'contexts.json'}", *TINY)
    job.run()
    (run,) = runs_by_name(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")["conversations"]
    client = MlflowClient()
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["turns"] == "3" and params["persona.name"] == "jasmine"
    assert params["models.assistant"] == "local/smollm2-135m-instruct"
    assert params["persona.system_prompt"].startswith("sha256:")  # long text: hashed, full text in config.yaml
    assert tags["chareval.stage"] == "conversations" and tags["choice.stage"] == "conversations"
    assert tags["git.commit"]
    assert metrics["conversations.count"] == 2 and metrics["conversations.messages"] == 6
    assert metrics["model.calls"] == 6 and metrics["tokens.input"] > 0 and metrics["tokens.output"] > 0
    assert metrics["model.latency_s"] > 0 and metrics["wall_time_s"] >= metrics["model.latency_s"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "conversations.jsonl", "inputs"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "inputs")] == ["inputs/contexts.json"]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="conversations.jsonl")
    assert len(open(local).read().splitlines()) == 2


@pytest.mark.slow  # the embedded model
def test_pipeline_is_a_parent_with_one_child_per_stage(make_job, workdir):
    make_job("pipeline", FIRST_STAGES, *TINY, "num_contexts=1", "num_conversations=1", "turns=1").run()
    runs = runs_by_name(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    (parent,) = runs["pipeline"]
    for stage in ("contexts", "conversations", "prepare"):
        (child,) = runs[stage]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
    assert parent.data.metrics["model.calls"] == runs["contexts"][0].data.metrics["model.calls"] + 1
    # Each stage tags the hash of what it read and of what it wrote: runs link up by content.
    tags = {stage: runs[stage][0].data.tags for stage in ("contexts", "conversations", "prepare")}
    run_dir = Path(tags["conversations"]["chareval.run_dir"])
    assert tags["conversations"]["chareval.sha256.conversations"] == file_sha256(run_dir / "conversations.jsonl")
    assert tags["prepare"]["chareval.input_sha256"] == tags["conversations"]["chareval.sha256.conversations"]
    assert tags["conversations"]["chareval.input_sha256"] == tags["contexts"]["chareval.sha256.contexts"]
    assert "chareval.sweep" not in tags["prepare"]


@pytest.mark.slow  # the embedded model
def test_next_stage_reads_its_input_from_an_mlflow_run(make_job, workdir):
    first = make_job("contexts", "num_contexts=1")
    first.run()
    (contexts_run,) = runs_by_name(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")["contexts"]
    job = make_job(
        "conversations",
        f"contexts_run={contexts_run.info.run_id}",
        "num_conversations=1",
        "turns=1",
        "models.generation.assistant.max_tokens=8",
        run_dir=workdir / "second",
    )
    outputs = job.run()
    assert (workdir / "second" / "inputs" / "contexts.json").is_file()
    assert json.loads(outputs["conversations"].read_text().splitlines()[0])["context_id"] == "ctx-001"


def test_flatten_params_drops_secrets_and_hashes_long_text():
    params = flatten_params(
        {"a": {"api_key": "sk-secret", "max_tokens": 5, "text": "x" * 400}, "l": [1, 2], "nested": [{"b": None}]}
    )
    assert "a.api_key" not in params and "sk-secret" not in json.dumps(params)
    assert params["a.max_tokens"] == "5" and params["l"] == "1,2" and params["nested.0.b"] == "null"
    assert params["a.text"].startswith("sha256:") and "(400 chars)" in params["a.text"]
    assert redact({"x": {"password": "p", "port": 1}}) == {"x": {"password": "***", "port": 1}}


@pytest.mark.slow  # a multirun subprocess
def test_cli_multirun_is_one_sweep_parent_with_a_child_per_job(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = run_cli(
        "-m",
        "stage=conversations",
        f"context_file={DATA / 'contexts.json'}",
        "num_conversations=1",
        "models.generation.assistant.max_tokens=8",
        "models.generation.user.max_tokens=8",
        "turns=1,2",
        f"paths.outputs={tmp_path / 'outputs'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = runs_by_name(uri)
    (sweep,) = runs["sweep"]
    children = runs["conversations"]
    assert sorted(c.data.params["turns"] for c in children) == ["1", "2"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {sweep.info.run_id}
    assert {c.data.tags["chareval.sweep"] for c in children} == {sweep.info.run_id}
    assert sweep.info.status == "FINISHED"
    assert len(list((tmp_path / "outputs" / "sweeps").glob("*/*/*/conversations.jsonl"))) == 2
