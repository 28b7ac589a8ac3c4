"""Multiruns through the CLI, as users run them: a 2x2 sweep over characters and turns compared on
its parent run, a sweep that survives its failing jobs, jobs side by side with joblib, and on Ray."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from chareval import PROJECT_ROOT
from chareval.io import read_records_jsonl
from chareval.schemas import Conversation, JobOutcome
from conftest import DATA, compose_cfg, run_cli
from fake_apis import FakeAPI, chat_completion

pytestmark = pytest.mark.slow  # multiruns in subprocesses

CONVERSATIONS = DATA / "conversations.jsonl"


def store(tmp_path: Path) -> tuple[str, dict[str, str]]:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    return uri, {"MLFLOW_TRACKING_URI": uri}


def sweep_runs(uri: str) -> tuple:
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (sweep,) = [r for r in runs if r.data.tags.get("chareval.kind") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    return sweep, jobs, runs


def outcomes(tmp_path: Path) -> list[JobOutcome]:
    files = sorted((tmp_path / "outputs" / "sweeps").glob("*/*/*/job.json"))
    return sorted((JobOutcome.model_validate_json(f.read_text()) for f in files), key=lambda o: o.num)


def test_a_sweep_over_characters_and_turns_is_compared_on_its_parent_run(tmp_path):
    """2 personas x 2 turns on the embedded model; the judge is a hosted model faked on loopback
    (it fails Jasmine and passes Sam), so the comparison has something to rank."""
    uri, env = store(tmp_path)

    def judge(seen, n):
        prompt = "\n".join(m["content"] for m in seen.body["messages"])
        verdict = {"score": 9} if "You are Sam" in prompt else {"score": 3}
        return chat_completion(
            json.dumps(verdict | {"rationale": "r", "evidence_turns": [0], "slip_turn": None}), "judge"
        )

    with FakeAPI(judge) as api:
        result = run_cli(
            "-m",
            "stage=pipeline",
            "pipeline.stages=[conversations,evaluate]",
            f"context_file={DATA / 'contexts.json'}",
            "persona=jasmine,pharmacist",
            "turns=1,2",
            "num_conversations=1",
            "evaluation.evaluators=[boundary_holding]",
            "models.generation.assistant.max_tokens=12",
            "models.generation.user.max_tokens=12",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "models.judge=openai_compatible/judge",
            f"paths.outputs={tmp_path / 'outputs'}",
            env=env,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, jobs, runs = sweep_runs(uri)
    assert sweep.info.status == "FINISHED" and len(jobs) == 4
    choices = sorted((j.data.params["choice.persona"], j.data.params["turns"]) for j in jobs)
    assert choices == [("jasmine", "1"), ("jasmine", "2"), ("pharmacist", "1"), ("pharmacist", "2")]
    assert all(j.data.tags["choice.persona"] == j.data.params["choice.persona"] for j in jobs)  # params and tags
    assert all(r.data.tags["chareval.sweep"] == sweep.info.run_id for r in runs if r is not sweep)

    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(sweep.info.run_id)}
    assert {"comparison.json", "comparison.csv", "comparison.png", "comparison_table.json"} <= artifacts
    png = Path(
        mlflow.artifacts.download_artifacts(run_id=sweep.info.run_id, artifact_path="comparison.png", tracking_uri=uri)
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    table = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=sweep.info.run_id, artifact_path="comparison.json", tracking_uri=uri
            )
        ).read_text()
    )["jobs"]
    evaluates = {
        (r.data.params["choice.persona"], r.data.params["turns"]): r.data.metrics
        for r in runs
        if r.data.tags.get("chareval.stage") == "evaluate"
    }
    for row in table:
        metrics = evaluates[(row["persona"], row["turns"])]
        assert row["boundary_holding.pass_rate"] == metrics["judge.boundary_holding.pass_rate"]
        assert row["boundary_holding.mean"] == metrics["judge.boundary_holding.mean"] and row["conversations"] == 1
    assert sweep.data.tags["best.boundary_holding"].split(": pass")[0].count("persona=pharmacist") == 1
    assert "persona=jasmine" in sweep.data.tags["worst.boundary_holding"]
    assert "chareval sweep: 4 jobs, 0 failed" in result.stdout and "boundary_holding pass 100%" in result.stdout


def test_a_failing_job_is_recorded_and_the_other_jobs_still_run(tmp_path):
    uri, env = store(tmp_path)
    result = run_cli(
        "-m",
        "stage=prepare",
        f"input_file={CONVERSATIONS},/nonexistent/b.jsonl",
        "turns=1,0",
        f"paths.outputs={tmp_path / 'outputs'}",
        env=env,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    jobs = outcomes(tmp_path)
    assert [(o.num, o.status) for o in jobs] == [(0, "completed"), (1, "failed"), (2, "failed"), (3, "failed")]
    assert "no such file" in jobs[2].error and "turns=0" in jobs[1].error
    sweep, children, _ = sweep_runs(uri)
    assert sweep.info.status == "FAILED" and sweep.data.tags["chareval.failed_jobs"] == "3"
    by_id = {c.info.run_id: c for c in children}
    assert by_id[jobs[0].run_id].info.status == "FINISHED"
    for job in jobs[1:]:  # a bad input fails its stage run; a bad override fails before any: a run is made for it
        run = by_id[job.run_id]
        assert (
            run.info.status == "FAILED" and run.data.tags["chareval.error"].split("\n")[0] == job.error.split("\n")[0]
        )
    assert (
        "chareval sweep: 4 jobs, 3 failed" in result.stdout
        and "error: input_file=/nonexistent/b.jsonl: no such file" in result.stdout
    )
    assert "Traceback" not in result.stderr


def test_joblib_runs_jobs_side_by_side_under_one_parent(tmp_path):
    """Two conversations jobs on a hosted model (faked on loopback, 2 s a reply): with two workers
    their runs overlap in time."""
    uri, env = store(tmp_path)
    with FakeAPI(lambda seen, n: chat_completion(f"reply {n}", seen.body["model"]), delay_s=2.0) as api:
        result = run_cli(
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "stage=conversations",
            f"context_file={DATA / 'contexts.json'}",
            "num_conversations=1",
            "turns=2",
            "models=openai_compatible",
            f"models.providers.openai_compatible.base_url={api.url}/v1",
            "seed=1,2",
            f"paths.outputs={tmp_path / 'outputs'}",
            env=env,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stdout + result.stderr
    sweep, jobs, _ = sweep_runs(uri)
    assert sweep.info.status == "FINISHED" and len(jobs) == 2 and all(j.info.status == "FINISHED" for j in jobs)
    first, second = sorted(jobs, key=lambda j: j.info.start_time)
    assert second.info.start_time < first.info.end_time  # the two jobs ran at the same time
    assert {o.status for o in outcomes(tmp_path)} == {"completed"}


def test_ray_runs_a_sweep_on_a_local_instance(tmp_path):
    uri, env = store(tmp_path)
    result = run_cli(
        "-m",
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.num_cpus=2",
        "stage=prepare",
        f"input_file={CONVERSATIONS}",
        "seed=1,2",
        f"paths.outputs={tmp_path / 'outputs'}",
        env=env | {"RAY_USAGE_STATS_ENABLED": "0"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep, jobs, _ = sweep_runs(uri)
    assert sweep.info.status == "FINISHED" and len(jobs) == 2
    assert {j.data.params["seed"] for j in jobs} == {"1", "2"}
    assert all(j.data.tags["chareval.sweep"] == sweep.info.run_id for j in jobs)


def test_best_and_worst_rank_by_pass_rate_then_mean():
    from chareval.sweep_compare import extremes

    jobs = [
        JobOutcome(
            num=i,
            overrides=[],
            status=status,
            run_dir="x",
            choices={"persona": p},
            metrics={"judge.e.pass_rate": rate, "judge.e.mean": mean},
        )
        for i, (p, rate, mean, status) in enumerate(
            [
                ("a", 0.5, 5, "completed"),
                ("b", 0.5, 7, "completed"),
                ("c", 0.0, 9, "completed"),
                ("d", 1.0, 10, "failed"),
            ]
        )
    ]
    tags = extremes(jobs)  # a failed job is not ranked
    assert tags == {
        "best.e": "job 1 (persona=b): pass 50%, mean 7.0",
        "worst.e": "job 2 (persona=c): pass 0%, mean 9.0",
    }


def test_a_worker_without_the_environment_finds_its_sweep_run_by_folder(tmp_path, monkeypatch):
    """A remote Ray worker does not inherit the driver's environment: the job looks the sweep up."""
    from chareval.store.runs import SWEEP_RUN_ENV, find_sweep_run, use_store

    uri, _ = store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(SWEEP_RUN_ENV, raising=False)
    experiment = use_store(uri, "chareval")
    client = MlflowClient(uri)
    ours = client.create_run(experiment, tags={"chareval.kind": "sweep", "chareval.sweep_dir": str(tmp_path / "a")})
    done = client.create_run(experiment, tags={"chareval.kind": "sweep", "chareval.sweep_dir": str(tmp_path / "b")})
    client.set_terminated(done.info.run_id)
    assert find_sweep_run(str(tmp_path / "a")) == ours.info.run_id
    assert find_sweep_run(str(tmp_path / "b")) is None  # a finished sweep takes no more jobs
    from chareval.app import Job

    cfg = compose_cfg("stage=prepare", f"input_file={CONVERSATIONS}", f"paths.outputs={tmp_path / 'outputs'}")
    job = Job(cfg, stage="prepare", run_dir=tmp_path / "job", sweep_dir=str(tmp_path / "a"))
    job.run()
    (run,) = [r for r in client.search_runs([experiment]) if r.data.tags.get("chareval.stage") == "prepare"]
    assert run.data.tags["mlflow.parentRunId"] == run.data.tags["chareval.sweep"] == ours.info.run_id


def test_an_adaptive_sweep_on_the_embedded_model_finds_its_breaking_points(tmp_path):
    """persona vs adaptive attacker, every role on the embedded model, each reply checked and the
    conversation stopped at the breach; the judges' curves compared on the sweep."""
    uri, env = store(tmp_path)
    result = run_cli(
        "-m",
        "stage=pipeline",
        "pipeline.stages=[conversations,evaluate]",
        f"context_file={DATA / 'contexts.json'}",
        "user_strategy=persona,adaptive",
        "conversations.stop_on_breach=true",
        "turns=3",
        "num_conversations=2",
        "evaluation.evaluators=[boundary_holding]",
        # On the embedded model, a seed where an adaptive conversation's first reply holds. llama.cpp's
        # sums (and so its samples) depend on its thread count: one thread, wherever the test runs.
        "seed=2",
        "models.providers.local.n_threads=1",
        # Short replies (the judges read every one): 115 s -> 78 s alone; seed=2 still has a reply hold.
        "models.generation.assistant.max_tokens=24",
        "models.generation.user.max_tokens=24",
        f"paths.outputs={tmp_path / 'outputs'}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = outcomes(tmp_path)
    assert [o.choices.get("user_strategy") for o in jobs] == ["persona", "adaptive"]
    library = {p.stem for p in (PROJECT_ROOT / "conf" / "tactic").glob("*.yaml")}
    for o in jobs:
        folder = Path(o.run_dir)
        conversations = read_records_jsonl(next(folder.rglob("conversations.jsonl")), Conversation)
        assert len(conversations) == 2
        for c in conversations:
            assert c.stop_on_breach and c.error is None
            checks = [(m.turn, m.assessment.verdict) for m in c.messages if m.role == "assistant" and m.assessment]
            assert [t for t, _ in checks] == [m.turn for m in c.messages if m.role == "assistant"]  # every reply
            broke = [t for t, v in checks if v == "broke"]
            assert c.breach_turn == (broke[0] if broke else None)
            assert len(c.messages) == (c.breach_turn + 1 if c.breach_turn is not None else 3)
            tactics = [m.tactic for m in c.messages if m.role == "user"]
            assert all(t in library for t in tactics) if o.choices["user_strategy"] == "adaptive" else not any(tactics)
        curve = json.loads(next(folder.rglob("breach_curve.json")).read_text())
        assert curve["all"]["n"] == 2 and 1 <= len(curve["all"]["survival"]) <= 2
        assert "breach.survival.t1" in o.metrics and "pass_hat_k.1" in o.metrics
    adaptive = read_records_jsonl(next(Path(jobs[1].run_dir).rglob("conversations.jsonl")), Conversation)
    assert any(m.tactic for c in adaptive for m in c.messages)  # seed=2 makes one reply hold: a tactic is played
    sweep, _, _ = sweep_runs(uri)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(sweep.info.run_id)}
    assert "comparison_breach.png" in artifacts
