"""Any OpenAI-compatible server you run (vLLM, Ollama, llama.cpp's llama-server):
openai_compatible/<the id the server lists at /v1/models>."""

from __future__ import annotations

from chareval.llm.providers.openai_chat import OpenAIChatProvider
from chareval.llm.registry import ProviderSpec, RemoteSettings, register
from chareval.remote.keys import Endpoint


class OpenAICompatibleSettings(RemoteSettings):
    """models.providers.openai_compatible (values in conf/provider/openai_compatible.yaml)."""

    base_url: str  # required: there is no public endpoint
    api_key_env: str | None  # the variable holding the server's key, if it wants one


register(
    ProviderSpec(
        "openai_compatible",
        lambda model, ctx: OpenAIChatProvider(
            "openai_compatible", model, ctx, Endpoint(None, None, None), key_env=ctx.settings.api_key_env
        ),
        OpenAICompatibleSettings,
    )
)
