"""OpenRouter (openrouter/<model>): the seed's Qwen3-32B user and the Claude fallback. Its responses
carry their cost; structured output is routed only to providers that honour response_format."""

from __future__ import annotations

from chareval.llm.providers.openai_chat import OpenAIChatProvider
from chareval.llm.registry import ProviderSpec, RemoteSettings, register
from chareval.remote.keys import Endpoint

ENDPOINT = Endpoint("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")


class OpenRouterSettings(RemoteSettings):
    """models.providers.openrouter (values in conf/provider/openrouter.yaml)."""

    require_parameters: bool


register(
    ProviderSpec(
        "openrouter",
        lambda model, ctx: OpenAIChatProvider(
            "openrouter", model, ctx, ENDPOINT, require_parameters=ctx.settings.require_parameters, report_cost=True
        ),
        OpenRouterSettings,
        ENDPOINT,
    )
)
