"""models.*: the model per role, sampling, fallbacks, the seed's policy, retries, prices. Each
provider's settings (models.providers.<name>) are checked by that provider (chareval/llm/providers/)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from chareval.config.base import ROLES, ModelString, Role, Strict


class Generation(Strict):
    max_tokens: int = Field(ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # unset: the provider's default


class RetrySettings(Strict):
    """models.retry (values in conf/retry/default.yaml)."""

    max_attempts: int = Field(ge=1, le=50)
    initial_backoff_s: float = Field(ge=0)
    max_backoff_s: float = Field(ge=0)
    attempt_timeout_s: float = Field(gt=0)
    total_timeout_s: float = Field(gt=0)


class Price(Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class Policy(Strict):
    """Allowed models per role, and fallbacks that must be configured (the seed's rules)."""

    allowed: dict[Role, list[str]]
    required_fallback: dict[str, str] = {}


class Models(Strict):
    name: str
    contexts: ModelString
    assistant: ModelString
    user: ModelString
    judge: ModelString
    # stage=repair rewrites slipped turns with it (with the assistant's sampling); unset: the assistant.
    teacher: ModelString | None
    generation: dict[Role, Generation]
    providers: dict[str, dict[str, Any]]  # name -> settings, each checked by its provider
    # primary model -> the model that answers when the primary stays overloaded
    fallback: dict[str, ModelString] = {}
    policy: Policy | None = None
    retry: RetrySettings
    # USD per million tokens, used when the provider's response carries no cost
    prices: dict[str, Price] = {}

    @model_validator(mode="after")
    def _policy(self) -> Models:
        if self.policy:
            for role, allowed in self.policy.allowed.items():
                if getattr(self, role) not in allowed:
                    raise ValueError(
                        f"models.{role}={getattr(self, role)} is not allowed by the {self.name} preset; "
                        f"allowed: {', '.join(allowed)}"
                    )
            for primary, required in self.policy.required_fallback.items():
                if primary in self.roles().values() and self.fallback.get(primary) != required:
                    raise ValueError(f"the {self.name} preset requires models.fallback.{primary}={required}")
        return self

    def teacher_model(self) -> str:
        return self.teacher or self.assistant

    def roles(self) -> dict[Role, str]:
        return {role: getattr(self, role) for role in ROLES}

    def named_models(self) -> dict[str, str]:
        """Every model string of this config, by the key that names it."""
        named = {f"models.{role}": model for role, model in self.roles().items()}
        if self.teacher:
            named["models.teacher"] = self.teacher
        return named | {f"models.fallback.{primary}": target for primary, target in self.fallback.items()}
