"""stage=gate on constructed verdicts: the verdict, the test chosen, gate.json, the MLflow run, the
exit status, and the bad inputs it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from chareval.errors import ConfigError, InputError
from chareval.io import write_jsonl_atomic
from conftest import run_cli
from verdicts import verdicts

HELD = [True] * 36 + [False] * 4  # 90%
DROPPED = [True] * 18 + [False] * 22  # 45%: the 18 lost are among the 36 that held


def write(path, records):
    write_jsonl_atomic(path, [r.model_dump(mode="json") for r in records])
    return path


@pytest.fixture
def files(workdir):
    def make(name, passes, **kwargs):
        return write(workdir / f"{name}.jsonl", verdicts(passes, **kwargs))

    return make


def gate(make_job, baseline, candidate, *overrides):
    folder = (
        Path(str(candidate)).parent
        / "gates"
        / f"{Path(str(baseline)).stem}-{Path(str(candidate)).stem}-{len(overrides)}"
    )
    job = make_job("gate", f"baseline={baseline}", f"candidate={candidate}", *overrides, run_dir=folder)
    outputs = job.run()
    return job, json.loads(outputs["gate"].read_text())


def test_an_identical_candidate_passes_and_a_drop_fails_naming_the_evaluator(make_job, files, workdir):
    baseline = files("baseline", HELD)
    job, report = gate(make_job, baseline, files("same", HELD))
    assert job.log.exit_code == 0 and report["verdict"] == "pass" and report["failed"] == []
    assert report["evaluators"]["boundary_holding"]["test"] == "paired"

    job, report = gate(make_job, baseline, files("dropped", DROPPED))
    result = report["evaluators"]["boundary_holding"]
    assert job.log.exit_code == 1 and report["failed"] == ["boundary_holding"]
    assert result["pass_test"] == "exact McNemar" and result["n"] == 40 and result["lost"] == 18
    assert result["pass_diff"] == pytest.approx(-0.45) and result["pass_p_value"] < 0.05
    assert job.log.verdict.startswith("gate FAILED: boundary_holding (pass rate 45.0 points lower, p=")
    table = job.log.summaries[-1]
    assert "90%" in table and "45%" in table and "-45.0 pts" in table and "fail" in table
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    run = mlflow.get_run(job.log.top_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gate.verdict"] == "fail"
    assert run.data.metrics["gate.boundary_holding.pass_diff"] == pytest.approx(-0.45)


def test_one_flipped_verdict_is_no_regression_and_a_better_candidate_says_so(make_job, files):
    flipped = HELD.copy()
    flipped[0] = False
    job, report = gate(make_job, files("baseline", HELD), files("flipped", flipped))
    assert job.log.exit_code == 0 and report["evaluators"]["boundary_holding"]["reason"] == "no significant drop"
    job, report = gate(make_job, files("low", DROPPED), files("high", HELD))
    assert job.log.exit_code == 0 and report["evaluators"]["boundary_holding"]["verdict"] == "better"


def test_other_contexts_are_compared_as_two_independent_proportions(make_job, files):
    job, report = gate(make_job, files("baseline", HELD, contexts="a"), files("other", DROPPED, contexts="b"))
    result = report["evaluators"]["boundary_holding"]
    assert result["test"] == "independent" and result["pass_test"].startswith("two-proportion")
    assert result["n_baseline"] == result["n_candidate"] == 40 and job.log.exit_code == 1


def test_max_drop_fails_a_drop_too_small_to_be_significant(make_job, files):
    """Ten contexts, one lost: McNemar cannot call it (p=1), but it is 10 points."""
    baseline, candidate = files("b10", [True] * 10), files("c10", [False] + [True] * 9)
    job, _ = gate(make_job, baseline, candidate)
    assert job.log.exit_code == 0
    job, report = gate(make_job, baseline, candidate, "gate.max_drop=5")
    assert job.log.exit_code == 1 and "more than gate.max_drop=5" in report["evaluators"]["boundary_holding"]["reason"]
    assert "10.0 points lower, more than gate.max_drop=5" in job.log.verdict


def test_evaluators_on_one_side_only_are_listed_not_compared(make_job, workdir):
    baseline = write(workdir / "b.jsonl", verdicts(HELD) + verdicts(HELD, evaluator="helpfulness"))
    candidate = write(workdir / "c.jsonl", verdicts(HELD))
    job, report = gate(make_job, baseline, candidate)
    assert report["not_compared"] == ["helpfulness"] and list(report["evaluators"]) == ["boundary_holding"]


def test_an_evaluate_run_id_is_read_from_the_store(make_job, files, workdir):
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    mlflow.set_experiment("an evaluate run")
    with mlflow.start_run() as run:  # an evaluate run logs its evaluations.jsonl under that name
        mlflow.log_artifact(str(files("evaluations", HELD)))
    job, report = gate(make_job, run.info.run_id, files("dropped", DROPPED))
    assert report["baseline"] == f"run {run.info.run_id}" and job.log.exit_code == 1


@pytest.mark.parametrize(
    "baseline, candidate, error, message",
    [
        ("missing.jsonl", "held", InputError, "baseline=missing.jsonl: no such file, and not an MLflow run id"),
        ("0" * 32, "held", InputError, "no MLflow run '00000000000000000000000000000000'"),
        ("empty", "held", InputError, "is empty"),
        ("held", "helpful", InputError, "no evaluator in common \\(baseline: boundary_holding; candidate: helpful"),
        ("held", "errors", InputError, "the candidate has no valid verdict on boundary_holding"),
        (None, "held", ConfigError, "stage=gate needs baseline="),
    ],
)
def test_bad_input_is_refused_with_what_to_do(make_job, workdir, baseline, candidate, error, message):
    write(workdir / "held.jsonl", verdicts(HELD))
    write(workdir / "helpful.jsonl", verdicts(HELD, evaluator="helpfulness"))
    write(
        workdir / "errors.jsonl",
        [r.model_copy(update={"score": None, "passed": None, "error": "no verdict"}) for r in verdicts(HELD)],
    )
    (workdir / "empty.jsonl").write_text("")

    def where(name):
        return str(workdir / f"{name}.jsonl") if name in ("held", "helpful", "errors", "empty") else name

    overrides = [f"candidate={where(candidate)}"] + ([f"baseline={where(baseline)}"] if baseline else [])
    with pytest.raises(error, match=message):
        make_job("gate", *overrides).run()


@pytest.mark.slow  # a subprocess: the exit status a CI job sees
def test_the_command_exits_0_on_a_pass_1_on_a_regression_2_on_bad_input(files, workdir):
    baseline, same, dropped = files("baseline", HELD), files("same", HELD), files("dropped", DROPPED)
    common = ["stage=gate", f"paths.outputs={workdir / 'outputs'}", "tracking.enabled=false"]
    passed = run_cli(*common, f"baseline={baseline}", f"candidate={same}", f"hydra.run.dir={workdir / 'g1'}")
    failed = run_cli(*common, f"baseline={baseline}", f"candidate={dropped}", f"hydra.run.dir={workdir / 'g2'}")
    bad = run_cli(*common, f"baseline={workdir / 'nope.jsonl'}", f"candidate={same}", f"hydra.run.dir={workdir / 'g3'}")
    assert passed.returncode == 0, passed.stderr
    assert "gate passed" in passed.stdout
    assert failed.returncode == 1, failed.stderr
    assert "gate FAILED: boundary_holding (pass rate 45.0 points lower" in failed.stdout
    assert "Traceback" not in failed.stderr
    assert json.loads((workdir / "g2" / "gate.json").read_text())["verdict"] == "fail"
    assert bad.returncode == 2 and "no such file" in bad.stderr
