"""Typed schema of the composed Hydra config, split by domain. Validated before any work, so a typo
or a bad value fails at once with the key named and the allowed values."""

from chareval.config.app import (
    FIX,
    AppConfig,
    Paths,
    Tracking,
    format_validation_error,
    is_secret_key,
    parse_config,
    register_resolvers,
)
from chareval.config.base import ROLES, ModelString, Role, Strict
from chareval.config.characters import Persona, Tactic, Theme, UserPersona
from chareval.config.finetune import FinetuneSettings, LocalLoraSettings, LoraSettings, TogetherSettings
from chareval.config.models import Generation, Models, Policy, Price, RetrySettings
from chareval.config.spend import Budget, PlanSettings
from chareval.config.stages import (
    BranchSettings,
    ContextsSettings,
    ConversationsSettings,
    EvaluationSettings,
    FinetuneLoopSettings,
    GateSettings,
    JudgeCheckSettings,
    PipelineSettings,
    PrepareSettings,
    RepairSettings,
)

__all__ = [
    "FIX",
    "ROLES",
    "Role",
    "AppConfig",
    "Budget",
    "PlanSettings",
    "BranchSettings",
    "ContextsSettings",
    "ConversationsSettings",
    "EvaluationSettings",
    "FinetuneLoopSettings",
    "FinetuneSettings",
    "GateSettings",
    "Generation",
    "JudgeCheckSettings",
    "LocalLoraSettings",
    "LoraSettings",
    "ModelString",
    "Models",
    "Paths",
    "Persona",
    "PipelineSettings",
    "Policy",
    "PrepareSettings",
    "RepairSettings",
    "Price",
    "RetrySettings",
    "Strict",
    "Tactic",
    "Theme",
    "TogetherSettings",
    "Tracking",
    "UserPersona",
    "format_validation_error",
    "is_secret_key",
    "parse_config",
    "register_resolvers",
]
