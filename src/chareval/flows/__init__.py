"""Flows run several stages through the public stage runner, under one parent MLflow run:
stage=pipeline and stage=finetune_loop. Each lists its stages once (their keys and models are
checked before any work)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chareval.config import AppConfig
from chareval.flows import finetune_loop, pipeline
from chareval.flows.runner import StageRunner, Step
from chareval.store.runs import StageRun


@dataclass(frozen=True)
class Flow:
    stages: Callable[[AppConfig], list[str]]  # the stages it runs, for the up-front checks
    run: Callable[[StageRunner, StageRun], dict[str, Path]]  # with the flow's parent run
    # What it needs beyond its stages' roles (raising ConfigError on what is wrong), checked before any
    # work: label -> model, e.g. the closed loop's teacher and student.
    models: Callable[[AppConfig], dict[str, str]] = lambda settings: {}


FLOWS: dict[str, Flow] = {
    "pipeline": Flow(pipeline.stages, pipeline.run),
    "finetune_loop": Flow(finetune_loop.stages, finetune_loop.run, finetune_loop.models),
}


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
