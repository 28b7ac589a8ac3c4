"""stage=pipeline: the stages of pipeline.stages in order, each a child of one parent MLflow run,
each reading the previous one's outputs."""

from __future__ import annotations

from pathlib import Path

from chareval.config import AppConfig
from chareval.flows.runner import StageRunner, Step
from chareval.tracking import StageRun


def stages(settings: AppConfig) -> list[str]:
    assert settings.pipeline is not None  # the stage=pipeline option brings pipeline.*
    return list(settings.pipeline.stages)


def run(runner: StageRunner, parent: StageRun) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    for stage in stages(runner.settings):
        outputs.update(runner.run(Step(stage), outputs))
    return outputs
