"""Evaluators by name: the name in conf/evaluation/*.yaml = the module = the class's `name`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chareval.errors import ConfigError

if TYPE_CHECKING:
    from chareval.evaluators.base import Evaluator

EVALUATORS: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    EVALUATORS[cls.name] = cls
    return cls


def build(name: str, rubric: str, pass_threshold: int) -> Evaluator:
    load_all()
    if name not in EVALUATORS:
        raise ConfigError(f"unknown evaluator '{name}'", f"known evaluators: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[name](rubric, pass_threshold)


def load_all() -> dict[str, type[Evaluator]]:
    """Import every evaluator module so that each registers itself."""
    import importlib
    import pkgutil

    import chareval.evaluators as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("base", "registry", "stats", "summary"):
            importlib.import_module(f"chareval.evaluators.{module.name}")
    return EVALUATORS
