"""stage=pipeline: the stages of pipeline.stages in order, each a child of one parent MLflow run,
each reading the previous one's outputs."""

from __future__ import annotations

from pathlib import Path

from chareval.config import AppConfig
from chareval.errors import ConfigError
from chareval.flows.runner import FLOWS, Flow, StageRunner, Step
from chareval.store.runs import StageRun


def stages(settings: AppConfig) -> list[str]:
    """pipeline.stages in order; when prepare selects by verdicts, evaluate runs just before it."""
    assert settings.pipeline is not None  # the stage=pipeline option brings pipeline.*
    order: list[str] = list(settings.pipeline.stages)
    select = settings.prepare.select if settings.prepare is not None else "all"
    if select != "all" and "prepare" in order and "evaluate" not in order[: order.index("prepare")]:
        if "evaluate" not in order and not (settings.evaluations_file or settings.evaluate_run):
            raise ConfigError(
                f"prepare.select={select} needs the judges' verdicts, and pipeline.stages has no evaluate",
                "add evaluate to pipeline.stages, or pass evaluations_file=<evaluations.jsonl> or evaluate_run=<id>",
            )
        if "evaluate" in order:
            order.remove("evaluate")
            order.insert(order.index("prepare"), "evaluate")
    return order


def run(runner: StageRunner, parent: StageRun) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    for stage in stages(runner.settings):
        outputs.update(runner.run(Step(stage), outputs))
    return outputs


FLOW = FLOWS.register("pipeline", Flow(stages, run))
