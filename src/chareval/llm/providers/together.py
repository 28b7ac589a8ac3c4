"""Together's OpenAI-compatible API, serving the models its fine-tuning jobs produce:
together/<output model name>."""

from __future__ import annotations

from chareval.llm.providers.openai_chat import OpenAIChatProvider
from chareval.llm.registry import ProviderSpec, RemoteSettings, register
from chareval.remote.keys import TOGETHER

register(
    ProviderSpec(
        "together",
        lambda model, ctx: OpenAIChatProvider("together", model, ctx, TOGETHER),
        RemoteSettings,
        TOGETHER,
    )
)
