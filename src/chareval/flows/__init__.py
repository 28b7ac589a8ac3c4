"""Flows run several stages through the public stage runner, under one parent MLflow run:
stage=pipeline and stage=finetune_loop. Each flow is a module here that registers itself in FLOWS
(flows/runner.py) and lists its stages once (their keys and models are checked before any work)."""

from __future__ import annotations

from pathlib import Path

from chareval.config import AppConfig
from chareval.flows.runner import FLOWS, Flow, StageRunner, Step

__all__ = ["FLOWS", "Flow", "StageRunner", "Step", "models_of", "run", "stages_of"]


def stages_of(name: str, settings: AppConfig) -> list[str]:
    """The stages a job runs: a flow's, or the one stage."""
    return FLOWS[name].stages(settings) if name in FLOWS else [name]


def models_of(name: str, settings: AppConfig) -> dict[str, str]:
    """The models a flow calls beyond its stages' roles (none for a single stage)."""
    return FLOWS[name].models(settings) if name in FLOWS else {}


def run(name: str, runner: StageRunner) -> dict[str, Path]:
    """A flow under its parent run, or one stage (nested under the job's sweep, if any)."""
    if name not in FLOWS:
        return runner.run(Step(name), {}, parent_run_id=runner.parent_run_id)
    with runner.parent_run(name) as parent:
        return FLOWS[name].run(runner, parent)
