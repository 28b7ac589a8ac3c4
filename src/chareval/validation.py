"""The composed config, checked as a whole before any work: the schema (chareval.config), then what
the registries know (every model's provider exists and its settings are valid, every evaluator
exists). Errors name the key and say how to fix it."""

from __future__ import annotations

from omegaconf import DictConfig

from chareval.config import FIX, AppConfig, parse_config
from chareval.errors import ConfigError
from chareval.evaluators.registry import load_all as evaluators
from chareval.llm import registry as providers


def validate_config(cfg: DictConfig) -> AppConfig:
    settings = parse_config(cfg)
    check(settings)
    return settings


def check(settings: AppConfig) -> None:
    try:
        providers.check_models(settings.models)
        for judge in settings.judges():
            providers.spec_for(judge)
    except ConfigError as e:
        raise ConfigError(f"invalid configuration:\n  {e.message}", e.fix or FIX) from None
    known = evaluators()
    for name in settings.evaluation.evaluators:
        if name not in known:
            raise ConfigError(
                "invalid configuration:\n"
                f"  evaluation.evaluators: unknown evaluator '{name}'; known: {', '.join(sorted(known))}",
                FIX,
            )
