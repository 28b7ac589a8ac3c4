"""Evaluators by name: the name in conf/evaluation/*.yaml = the module = the class's `name`. Each
evaluator module registers its class (@register) at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chareval.plugins import Registry

if TYPE_CHECKING:
    from chareval.evaluators.base import Evaluator

EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator",
    "chareval.evaluators",
    helpers=("base", "registry", "stats", "summary", "compare", "survival"),
    fix="evaluation.evaluators lists modules of chareval/evaluators (conf/evaluation/default.yaml)",
)


def register(cls: type[Evaluator]) -> type[Evaluator]:
    return EVALUATORS.register(cls.name, cls)


def build(name: str, rubric: str, pass_threshold: int) -> Evaluator:
    return EVALUATORS.get(name)(rubric, pass_threshold)


def load_all() -> dict[str, type[Evaluator]]:
    """Every evaluator class by name."""
    return EVALUATORS.load()
