"""One way to extend: a stage, a flow, an evaluator, a provider or a fine-tuning backend is found by
its registry (chareval.plugins), so a new one is its module and its YAML. Here a stage is declared
the way a module of chareval/stages declares itself, and runs with knobs AppConfig has no field for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from chareval import PROJECT_ROOT
from chareval.app import Job
from chareval.config import Strict
from chareval.errors import ConfigError
from chareval.evaluators.registry import EVALUATORS
from chareval.flows import FLOWS
from chareval.llm.registry import PROVIDERS
from chareval.plugins import Registry
from chareval.stages import STAGES, Stage
from chareval.stages.backends import BACKENDS
from chareval.stages.base import StageContext, StageResult
from chareval.validation import validate_config
from conftest import compose_cfg


class EchoSettings(Strict):
    greeting: str
    times: int


def echo(ctx: StageContext, inputs: dict[str, Path]) -> StageResult:
    knobs = ctx.knobs("echo", EchoSettings)
    out = ctx.run_dir / "echo.json"
    out.write_text(json.dumps([knobs.greeting] * knobs.times))
    return StageResult(outputs={"echo": out}, metrics={"echo.times": knobs.times}, summary="echoed")


@pytest.fixture
def echo_stage():
    STAGES.register("echo", Stage(echo, writes=("echo.json",), knobs=("echo", EchoSettings)))
    yield
    STAGES._entries.pop("echo")


def test_every_kind_of_plugin_is_found_by_its_registry():
    assert {"contexts", "conversations", "branch", "evaluate", "finetune", "gate"} <= set(STAGES.names())
    assert set(FLOWS.names()) == {"pipeline", "finetune_loop"}
    assert {"boundary_holding", "helpfulness"} <= set(EVALUATORS.names())
    assert {"local", "local_lora", "anthropic", "openrouter", "together", "mock"} <= set(PROVIDERS.names())
    assert set(BACKENDS.names()) == {"local_lora", "together"}
    with pytest.raises(ConfigError, match=r"unknown fine-tuning backend 'nope' \(known: local_lora, together\)"):
        BACKENDS.get("nope")


def test_a_name_registered_twice_is_refused():
    registry: Registry[int] = Registry("widget", "chareval.stages.backends")
    registry.register("a", 1)
    with pytest.raises(ConfigError, match="two widgets are named 'a'"):
        registry.register("a", 2)


def test_a_new_stage_runs_with_knobs_appconfig_has_no_field_for(echo_stage, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    cfg = compose_cfg("models=mock", f"paths.outputs={workdir / 'outputs'}", "+echo.greeting=hi", "+echo.times=2")
    settings = validate_config(cfg)
    assert isinstance(settings.echo, EchoSettings) and settings.derive(turns=1).echo == settings.echo
    job = Job(cfg, stage="echo", run_dir=workdir / "echo", choices={"stage": "echo"})
    outputs = job.run()
    assert json.loads(outputs["echo"].read_text()) == ["hi", "hi"]
    run = MlflowClient().get_run(job.log.top_run_id)
    assert run.data.metrics["echo.times"] == 2 and run.data.tags["chareval.stage"] == "echo"
    assert "chareval.sha256.echo" in run.data.tags  # its output links up like any stage's


def test_a_new_stages_knobs_are_checked_by_its_class_and_an_unclaimed_key_is_refused(echo_stage):
    with pytest.raises(ConfigError, match=r"echo\.times='two': Input should be a valid integer"):
        validate_config(compose_cfg("+echo.greeting=hi", "+echo.times=two"))
    with pytest.raises(ConfigError, match="nobody: unknown key"):
        validate_config(compose_cfg("+nobody.x=1"))


def test_every_provider_with_settings_has_its_yaml_in_the_defaults():
    defaults = (PROJECT_ROOT / "conf" / "config.yaml").read_text()
    for name, spec in PROVIDERS.items():
        if spec.settings is not None:
            assert (PROJECT_ROOT / "conf" / "provider" / f"{name}.yaml").is_file(), name
            assert f"- provider@models.providers.{name}: {name}" in defaults, name


def test_every_backend_has_a_finetune_option_and_every_option_a_backend():
    import yaml

    options = {yaml.safe_load(p.read_text())["backend"] for p in (PROJECT_ROOT / "conf" / "finetune").glob("*.yaml")}
    assert options == set(BACKENDS.names())
