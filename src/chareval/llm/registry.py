"""Model providers by name. Each provider is one module under chareval/llm/providers/ that registers
a ProviderSpec: its name, the schema of its settings (models.providers.<name>, whose values live in
conf/provider/<name>.yaml), its key and base-URL variables, any rule it has on the models config,
and how to build it. Config checks, key checks, concurrency, retries and construction all read it.
Adding a provider = one module + its YAML, which
conf/config.yaml's defaults bring in by one line (Hydra must know a provider's keys to take
command-line overrides of them, e.g. models.providers.<name>.base_url=...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chareval.config import Models
from chareval.errors import ConfigError
from chareval.llm.base import Provider
from chareval.plugins import Registry
from chareval.remote.keys import Endpoint, api_key
from chareval.remote.limits import InFlightLimit


class ProviderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RemoteSettings(ProviderSettings):
    """What every hosted API has. base_url null = the provider's <NAME>_BASE_URL, else its public URL."""

    base_url: str | None
    max_in_flight: int = Field(ge=1, le=256)


@dataclass(frozen=True)
class BuildContext:
    """What a provider is built from, besides its model name."""

    settings: Any  # the provider's validated settings (None when it has none)
    models: Models
    limit: InFlightLimit  # the provider's in-flight limit, shared by every role and thread
    registry: str | None  # the registry of fine-tuned models (local_lora/<name>)
    spec: ProviderSpec


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    build: Callable[[str, BuildContext], Provider]
    settings: type[ProviderSettings] | None = None
    endpoint: Endpoint = Endpoint(None, None, None)  # key variable (checked before any work), URLs
    # A rule this provider puts on the models config (e.g. Anthropic's thinking budget): raises ValueError.
    check: Callable[[Models, Any], None] | None = None
    local: bool = False  # runs in this process: one call at a time
    free: bool = False  # no bill (the mock); a local provider is free too: dry_run prices its calls at $0

    @property
    def billed(self) -> bool:
        return not (self.free or self.local)


# Each module of chareval/llm/providers registers its ProviderSpec here at import.
PROVIDERS: Registry[ProviderSpec] = Registry(
    "provider", "chareval.llm.providers", helpers=("openai_chat",), fix="model strings are provider/model"
)


def register(spec: ProviderSpec) -> ProviderSpec:
    return PROVIDERS.register(spec.name, spec)


def load_all() -> dict[str, ProviderSpec]:
    """Every provider (their SDKs load only when a provider is built)."""
    return PROVIDERS.load()


def spec_for(model: str) -> ProviderSpec:
    provider = model.split("/", 1)[0]
    known = load_all()
    if provider not in known:
        raise ConfigError(
            f"unknown provider '{provider}' in '{model}'; known providers: {', '.join(sorted(known))}",
            "model strings are provider/model (see the README's models section)",
        )
    return known[provider]


def settings_for(spec: ProviderSpec, models: Models) -> Any:
    """The provider's settings, validated against its schema; errors name the key."""
    if spec.settings is None:
        return None
    raw = models.providers.get(spec.name)
    if raw is None:
        raise ConfigError(
            f"models.providers.{spec.name} is not configured",
            f"conf/config.yaml takes every provider's settings from conf/provider/{spec.name}.yaml; restore that line",
        )
    try:
        return spec.settings.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"models.providers.{spec.name}.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()
        )
        raise ConfigError(f"invalid provider settings: {problems}", f"see conf/provider/{spec.name}.yaml") from None


def check_models(models: Models) -> None:
    """Every provider a role, a judge or a fallback names exists, every configured provider's settings
    are valid, and each provider's own rules hold. Raises ConfigError naming the key."""
    for key, model in models.named_models().items():
        try:
            spec_for(model)
        except ConfigError as e:
            raise ConfigError(f"{key}={model}: {e.message}", e.fix) from None
    for name in models.providers:
        if name in load_all():
            settings = settings_for(PROVIDERS[name], models)
            spec = PROVIDERS[name]
            if spec.check:
                try:
                    spec.check(models, settings)
                except ValueError as e:
                    raise ConfigError(
                        str(e), f"see conf/provider/{name}.yaml and conf/models/{models.name}.yaml"
                    ) from None


def max_in_flight(spec: ProviderSpec, settings: Any) -> int:
    return 1 if spec.local else settings.max_in_flight


def build(
    model: str,
    models: Models,
    limits: Callable[[str, int], InFlightLimit],
    registry: str | None = None,
    *,
    with_fallback: bool = True,
) -> Provider:
    """The provider for a provider/model string, wrapped in its fallback when one is configured."""
    spec = spec_for(model)
    settings = settings_for(spec, models)
    context = BuildContext(settings, models, limits(spec.name, max_in_flight(spec, settings)), registry, spec)
    provider = spec.build(model.split("/", 1)[1], context)
    if with_fallback and model in models.fallback:
        from chareval.llm.fallback import FallbackProvider

        target = models.fallback[model]
        return FallbackProvider(provider, build(target, models, limits, registry, with_fallback=False), target)
    return provider


def require_keys(models: Models, needs: dict[str, str]) -> None:
    """Fail before any work when a provider that `needs` (config key -> model) uses, or its fallback,
    has no key."""
    missing = []
    for provider, why in providers_used(models, needs).items():
        key_env = load_all()[provider].endpoint.key_env
        if key_env and not api_key(key_env):
            missing.append(f"{key_env} (needed by {', '.join(why)})")
    if missing:
        raise ConfigError(
            "missing API key: " + "; ".join(missing),
            "export it in the shell or put it in .env at the project root (git ignores .env); "
            "or use models=local to run offline",
        )


def providers_used(models: Models, needs: dict[str, str]) -> dict[str, list[str]]:
    """provider -> what needs it; `needs` maps a config key (models.user) to its model."""
    used: dict[str, list[str]] = {}
    for why, model in needs.items():
        for m, reason in ((model, why), (models.fallback.get(model), f"fallback of {why}")):
            if m:
                used.setdefault(m.split("/", 1)[0], []).append(reason)
    return used
