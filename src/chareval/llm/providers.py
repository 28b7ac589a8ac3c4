"""Provider objects from provider/model strings and the models config."""

from __future__ import annotations

import threading
from collections.abc import Callable

from chareval.config import (
    AnthropicProvider,
    LocalProvider,
    Models,
    OpenRouterProvider,
    RemoteProvider,
)
from chareval.errors import ConfigError
from chareval.llm import keys
from chareval.llm.base import Provider


def _settings(models: Models, provider: str, default):
    """The provider's settings from conf/models/*.yaml, or its defaults when the preset has none."""
    found = getattr(models.providers, provider)
    if found is None and default is None:
        raise ConfigError(f"models.providers.{provider} is not configured", f"add providers.{provider} to conf/models/{models.name}.yaml")
    return found or default


def build_provider(
    model: str, models: Models, slots: Callable[[str, int], threading.Semaphore], registry: str | None = None
) -> Provider:
    """The provider for a provider/model string, wrapped in its fallback when one is configured."""
    provider, _, name = model.partition("/")
    if provider == "local":
        from chareval.llm.local import LocalLlamaProvider

        built: Provider = LocalLlamaProvider(name, _settings(models, "local", LocalProvider.packaged()))
    elif provider == "local_lora":
        from chareval.llm.lora_provider import LocalLoraProvider

        if registry is None:
            raise ConfigError(f"{model} needs the registry of fine-tuned models (paths.registry)")
        built = LocalLoraProvider(name, registry)
    elif provider == "anthropic":
        from chareval.llm.anthropic_provider import AnthropicMessagesProvider

        s = _settings(models, "anthropic", AnthropicProvider())
        built = AnthropicMessagesProvider(name, s, models.retry, models.prices, slots(provider, s.max_in_flight))
    elif provider in ("openrouter", "openai_compatible", "together"):
        from chareval.llm.openai_provider import OpenAIChatProvider

        default = {"openrouter": OpenRouterProvider(), "together": RemoteProvider()}.get(provider)
        s = _settings(models, provider, default)
        url = s.base_url if provider == "openai_compatible" else keys.base_url(provider, s.base_url)
        built = OpenAIChatProvider(
            provider,
            name,
            base_url=url,
            api_key=keys.api_key(provider, getattr(s, "api_key_env", None)),
            retry=models.retry,
            prices=models.prices,
            slots=slots(provider, s.max_in_flight),
            require_parameters=getattr(s, "require_parameters", False),
        )
    else:
        raise ConfigError(f"no provider '{provider}' for model '{model}'")
    if model in models.fallback:
        from chareval.llm.fallback import FallbackProvider

        target = models.fallback[model]
        return FallbackProvider(built, build_provider(target, models.model_copy(update={"fallback": {}}), slots, registry), target)
    return built
