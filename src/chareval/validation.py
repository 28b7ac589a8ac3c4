"""The composed config, checked as a whole before any work: the schema (chareval.config), then what
the registries know (every model's provider exists and its settings are valid, every evaluator
exists). Errors name the key and say how to fix it."""

from __future__ import annotations

from omegaconf import DictConfig
from pydantic import ValidationError

from chareval.config import FIX, AppConfig, FinetuneSettings, format_validation_error, parse_config
from chareval.errors import ConfigError
from chareval.evaluators.registry import load_all as evaluators
from chareval.llm import registry as providers
from chareval.stages import STAGES
from chareval.stages.backends import BACKENDS


def validate_config(cfg: DictConfig) -> AppConfig:
    settings = parse_config(cfg)
    check(settings)
    return settings


def check(settings: AppConfig) -> None:
    settings.finetune = backend_settings(settings)
    stage_knobs(settings)
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


def backend_settings(settings: AppConfig) -> FinetuneSettings:
    """finetune.* checked by the class its backend registers (its errors name the finetune.* key)."""
    f = settings.finetune
    try:
        backend = BACKENDS.get(f.backend)
    except ConfigError as e:
        raise ConfigError(f"invalid configuration:\n  finetune.backend: {e.message}", e.fix) from None
    if isinstance(f, backend.settings):
        return f
    try:
        return backend.settings.model_validate(f.model_dump())
    except ValidationError as e:
        lines = format_validation_error(e).replace("\n  ", "\n  finetune.").replace("  ", "  finetune.", 1)
        raise ConfigError(f"invalid configuration:\n{lines}", f"see conf/finetune/ ({f.backend}) or {FIX}") from None


def stage_knobs(settings: AppConfig) -> None:
    """The knobs of a stage that has no field of its own on AppConfig, checked by the settings class
    its module registers; a top-level key no stage claims is an error."""
    claimed = {spec.knobs[0]: spec.knobs[1] for spec in STAGES.values() if spec.knobs}
    for key, raw in list((settings.model_extra or {}).items()):
        kind = claimed.get(key)
        if kind is None:
            raise ConfigError(f"invalid configuration:\n  {key}: unknown key", FIX)
        if isinstance(raw, kind):
            continue
        try:
            setattr(settings, key, kind.model_validate(raw))
        except ValidationError as e:
            lines = format_validation_error(e).replace("\n  ", f"\n  {key}.").replace("  ", f"  {key}.", 1)
            raise ConfigError(f"invalid configuration:\n{lines}", f"see conf/stage/{key}.yaml or {FIX}") from None
