"""dry_run=true and budget.*, against the loopback fake APIs of the throughput benchmark (the seed's
models through the real Anthropic and OpenAI SDKs): the plan counts what a run then sends, and a run
stopped by its budget resumes without sending anything twice."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

import fake_llm  # benchmarks/, on the path from conftest
from chareval import PROJECT_ROOT
from chareval.errors import ConfigError
from conftest import run_cli

EVALUATORS = len(OmegaConf.load(PROJECT_ROOT / "conf" / "evaluation" / "default.yaml").evaluators)
N, TURNS = 3, 3
ARGS = [
    "models=seed",
    "pipeline.stages=[contexts,conversations,evaluate]",
    f"num_contexts={N}",
    f"num_conversations={N}",
    f"turns={TURNS}",
    "tracking.traces=false",
]
# Estimates of about one token a call: the budget then counts what the fake APIs bill (150 tokens an
# Anthropic call, 52 an OpenRouter one), which a test can reason about.
TINY_ESTIMATES = [
    "plan.chars_per_token=1000000",
    "plan.thinking_share=0",
    *(f"plan.output_tokens.{role}=1" for role in ("default", "contexts", "assistant", "user", "judge")),
]


@pytest.fixture
def fake(monkeypatch):
    server = fake_llm.Server(latency_s=0.0, rate_limit=None)
    with server.api:
        env = {
            "ANTHROPIC_API_KEY": "test-key",
            "OPENROUTER_API_KEY": "test-key",
            "ANTHROPIC_BASE_URL": server.api.url,
            "OPENROUTER_BASE_URL": server.api.url,
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        server.env = env
        yield server


def requests(server) -> int:
    return server.counts["anthropic"] + server.counts["openai"]


def runs_of(workdir):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def by_role(plan: dict) -> dict[str, int]:
    return {line["role"]: line["calls"] for line in plan["by_role_and_model"]}


def test_the_plan_counts_every_request_the_run_then_sends_and_a_rerun_is_all_cache(make_job, workdir, fake):
    planned = make_job("pipeline", *ARGS, "dry_run=true", run_dir=workdir / "plan").run()
    plan = json.loads(planned["plan"].read_text())
    assert requests(fake) == 0  # no model was asked
    assert sorted(p.name for p in (workdir / "plan").iterdir()) == ["config.yaml", "plan.json"]
    assert runs_of(workdir) == []  # and no MLflow run was made (in this test's store)
    # One planning call (a capable model plans all N angles at once), then one call per context; the
    # assistant speaks at turns 0 and 2, the user at turn 1; every judge reads every conversation.
    assert by_role(plan) == {"contexts": 1 + N, "assistant": 2 * N, "user": N, "judge": EVALUATORS * N}
    assert plan["cache_hits"] == 0 and plan["requests"] == plan["calls"]
    assert 0 < plan["cost_usd"] < plan["max_cost_usd"]  # the seed's prices; thinking counted

    make_job("pipeline", *ARGS, run_dir=workdir / "real").run()
    assert requests(fake) == plan["calls"]
    assert fake.counts["openai"] == by_role(plan)["user"]  # OpenRouter serves the user only

    again = json.loads(make_job("pipeline", *ARGS, "dry_run=true", run_dir=workdir / "again").run()["plan"].read_text())
    assert again["calls"] == plan["calls"] and again["cache_hits"] == plan["calls"] and again["requests"] == 0
    assert again["cost_usd"] == 0
    assert requests(fake) == plan["calls"]


@pytest.mark.slow
def test_a_run_stopped_by_its_budget_fails_cleanly_and_resumes_paying_for_nothing_twice(workdir, fake):
    run_dir = workdir / "run"
    common = [*ARGS, *TINY_ESTIMATES, f"paths.outputs={workdir / 'outputs'}", f"hydra.run.dir={run_dir}"]
    full = 1 + N + 2 * N + N + EVALUATORS * N

    stopped = run_cli("stage=pipeline", *common, "budget.max_tokens=1500", env=fake.env)
    assert stopped.returncode == 2, stopped.stderr
    assert "budget.max_tokens=1500" in stopped.stderr and f"hydra.run.dir={run_dir}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    sent = requests(fake)
    assert 0 < sent < full
    runs = runs_of(workdir)
    failed = [r for r in runs if r.info.status == "FAILED" and "budget" in r.data.tags.get("chareval.error", "")]
    assert failed, [(r.info.run_name, r.info.status) for r in runs]
    spent = sum(r.data.metrics.get("tokens.input", 0) + r.data.metrics.get("tokens.output", 0) for r in failed)
    assert spent <= 1500 + 32 * 150  # at most the calls that were in flight when it stopped ran over

    resumed = run_cli("stage=pipeline", *common, env=fake.env)
    assert resumed.returncode == 0, resumed.stderr
    assert requests(fake) == full  # the first run's answers came from the cache: none was asked twice
    assert (run_dir / "evaluations.jsonl").is_file()


@pytest.mark.slow
def test_a_sweep_budget_is_shared_by_its_jobs(workdir, fake):
    def sweep(folder: str, scope: str, turns: str):
        return run_cli(
            "-m",
            "stage=conversations",
            f"context_file={PROJECT_ROOT / 'tests' / 'data' / 'contexts.json'}",
            "models=seed",
            "tracking.traces=false",
            "cache=false",  # every call is a request: the counts below are the budget's alone
            "num_conversations=2",
            f"turns={turns}",
            *TINY_ESTIMATES,
            f"paths.outputs={workdir / 'outputs'}",
            f"hydra.sweep.dir={workdir / folder}",
            "budget.max_tokens=400",
            f"budget.scope={scope}",
            env=fake.env,
        )

    def outcomes(folder: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((workdir / folder).glob("*/job.json"))]

    shared = sweep("shared", "sweep", "3,4")
    assert shared.returncode != 0
    first, second = outcomes("shared")
    assert first["status"] == second["status"] == "failed"
    assert "budget.max_tokens=400" in first["error"]
    # The second job found the budget spent by the first and asked nothing.
    assert "by this sweep's jobs" in second["error"]
    made = workdir / "shared" / "1_conversations" / "conversations.jsonl"
    assert not made.exists() or made.read_text().strip() == ""
    spent_by_the_sweep = requests(fake)
    assert spent_by_the_sweep > 0

    # A budget for each job: the second job spends its own as well.
    alone = sweep("alone", "job", "3,4")
    assert alone.returncode != 0
    assert all("budget.max_tokens=400" in o["error"] and "sweep's jobs" not in o["error"] for o in outcomes("alone"))
    assert requests(fake) - spent_by_the_sweep > spent_by_the_sweep


@pytest.mark.slow
def test_a_dry_run_sweep_plans_each_job_and_makes_no_mlflow_run(tmp_path, fake):
    done = run_cli(
        "-m",
        "stage=conversations",
        f"context_file={PROJECT_ROOT / 'tests' / 'data' / 'contexts.json'}",
        "models=seed",
        "num_conversations=2",
        "turns=1,3",
        "dry_run=true",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        env=fake.env,
    )
    assert done.returncode == 0, done.stderr
    plans = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/plan.json"))]
    assert [p["calls"] for p in plans] == [2, 2 * 3]  # turns=1: the assistant once; turns=3: a, u, a
    assert "dry run of 2 jobs" in done.stdout and "8 model calls" in done.stdout
    assert requests(fake) == 0 and not (tmp_path / "mlruns").exists()


def test_a_plan_needs_no_api_key_and_names_the_ones_a_real_run_needs(make_job, workdir, monkeypatch):
    for key in ("ANTHROPIC_API_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    plan = json.loads(make_job("pipeline", *ARGS, "dry_run=true", run_dir=workdir / "plan").run()["plan"].read_text())
    assert plan["calls"] == 1 + N + 2 * N + N + EVALUATORS * N
    assert "ANTHROPIC_API_KEY" in plan["missing_keys"] and "OPENROUTER_API_KEY" in plan["missing_keys"]
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):  # the real run stops before any work
        make_job("pipeline", *ARGS, run_dir=workdir / "real")
