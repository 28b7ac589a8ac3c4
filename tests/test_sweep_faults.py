"""Sweeps after faults: a swept key shows as it was for each job, a job refused by its folder's lock is a
failed job (naming the process that holds it), a killed sweep's run is closed when the sweep is rerun,
and a failed job's summary shows the key and the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from chareval.schemas import JobOutcome
from chareval.sweep import job_choices, print_summary
from chareval.sweep_compare import extremes, table
from conftest import DATA, compose_cfg, run_cli

CONVERSATIONS = DATA / "conversations.jsonl"


def test_a_swept_judge_model_is_each_jobs_own():
    chosen = [
        job_choices(compose_cfg("stage=evaluate", f"judge_model={j}"), {"stage": "evaluate"}, [f"judge_model={j}"])
        for j in ("mock/judge", "mock/strict_judge")
    ]
    assert [c["judge"] for c in chosen] == ["mock/judge", "mock/strict_judge"]
    assert "judge_model" not in chosen[0]  # shown once, as the judge
    # A swept key that is no usual choice is still each job's own.
    knob = job_choices(compose_cfg("evaluation.judge_samples=3"), {}, ["evaluation.judge_samples=3"])
    assert knob["evaluation.judge_samples"] == "3"
    outcomes = [
        JobOutcome(
            num=i,
            overrides=[],
            status="completed",
            run_dir="x",
            choices=c,
            metrics={"judge.e.pass_rate": 0.5 * i, "judge.e.mean": 5.0},
        )
        for i, c in enumerate(chosen)
    ]
    assert [row["judge"] for row in table(outcomes)] == ["mock/judge", "mock/strict_judge"]
    assert "judge=mock/strict_judge" in extremes(outcomes)["best.e"]


def test_a_failed_jobs_summary_shows_the_key_and_the_reason(capsys):
    error = "invalid configuration:\n  turns=0: Input should be greater than or equal to 1\n  fix: see conf/config.yaml"
    failed = JobOutcome(num=0, overrides=["turns=0"], status="failed", run_dir="r", error=error)
    print_summary([failed], DATA, [], None)
    out = capsys.readouterr().out
    assert "error: invalid configuration: turns=0: Input should be greater than or equal to 1" in out
    assert "fix: see conf/config.yaml" in out


def two_job_sweep(tmp_path, sweep_dir, uri: str):
    return run_cli(
        "-m",
        "stage=prepare",
        f"input_file={CONVERSATIONS}",
        "seed=1,2",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.outputs={tmp_path / 'outputs'}",
        env={"MLFLOW_TRACKING_URI": uri},
    )


@pytest.mark.slow  # sweeps in subprocesses
def test_a_job_refused_by_a_still_running_worker_fails_the_sweep_naming_its_pid(tmp_path):
    """What a killed joblib driver leaves: a worker still holding job 0's folder, and that folder's
    job.json from the earlier launch. The rerun's job 0 is refused: a failed job, with the pid."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    folder = sweep_dir / "0_prepare"
    folder.mkdir(parents=True)
    stale = JobOutcome(num=0, overrides=[], status="completed", run_dir=str(folder), sweep="an-earlier-launch")
    (folder / "job.json").write_text(stale.model_dump_json())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"f = open({str(folder / '.chareval.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = two_job_sweep(tmp_path, sweep_dir, uri)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 jobs, 1 failed" in result.stdout
    assert f"pid {holder.pid}" in result.stdout and f"kill {holder.pid}" in result.stdout
    refused = JobOutcome.model_validate_json((folder / "job.refused.json").read_text())
    assert refused.status == "failed" and refused.busy_pid == str(holder.pid)
    assert json.loads((folder / "job.json").read_text())["sweep"] == "an-earlier-launch"  # the worker's, untouched
    client = MlflowClient(uri)
    (sweep,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`chareval.kind` = 'sweep'"
    )
    assert sweep.info.status == "FAILED" and sweep.data.tags["chareval.failed_jobs"] == "1"


@pytest.mark.slow  # a sweep in a subprocess
def test_rerunning_a_killed_sweep_closes_its_run_as_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    from chareval.store.runs import use_store

    # What a killed driver leaves in the store: its sweep run, RUNNING, for this sweep folder.
    client = MlflowClient(uri)
    experiment = use_store(uri, "chareval")
    killed = client.create_run(experiment, tags={"chareval.kind": "sweep", "chareval.sweep_dir": str(sweep_dir)})
    time.sleep(0.01)
    result = two_job_sweep(tmp_path, sweep_dir, uri)
    assert result.returncode == 0, result.stderr[-2000:]
    old = client.get_run(killed.info.run_id)
    assert old.info.status == "KILLED" and "killed" in old.data.tags["chareval.error"]
    (new,) = [
        r
        for r in client.search_runs([experiment], "tags.`chareval.kind` = 'sweep'")
        if r.info.run_id != killed.info.run_id
    ]
    assert new.info.status == "FINISHED" and new.data.tags["chareval.resumes"] == killed.info.run_id
