"""Anthropic Messages API (official SDK). Thinking is always on for the seed's Sonnet 4 (budget
10000, max_tokens above it, no temperature); requests are streamed so long generations never hit
the SDK's non-streaming limit. Structured output with thinking on: one tool offered with
tool_choice auto (a forced tool_choice is refused with thinking), then validated by the client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chareval.config import Models
from chareval.llm.base import LLMRequest, LLMResponse, load_once, with_cost
from chareval.llm.registry import BuildContext, ProviderSpec, RemoteSettings, register
from chareval.remote.keys import Endpoint, api_key
from chareval.remote.retry import Failure, call_with_retries, classify_sdk_error
from chareval.schemas import Usage

ENDPOINT = Endpoint("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com")

TOOL_NAME = "submit_answer"
TOOL_INSTRUCTION = (
    f"\n\nWhen you have your answer, call the tool `{TOOL_NAME}` exactly once with it. "
    "Its input must follow the tool's schema."
)


class Thinking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    budget_tokens: int = Field(ge=1024)


class AnthropicSettings(RemoteSettings):
    """models.providers.anthropic (values in conf/provider/anthropic.yaml)."""

    thinking: Thinking


def check(models: Models, settings: AnthropicSettings) -> None:
    """With thinking on, every role on Anthropic needs max_tokens above the budget and no temperature."""
    if not settings.thinking.enabled:
        return
    for role, model in models.roles().items():
        gen = models.generation.get(role)
        if model.startswith("anthropic/") and gen:
            if gen.max_tokens <= settings.thinking.budget_tokens:
                raise ValueError(
                    f"models.generation.{role}.max_tokens must be above the thinking budget "
                    f"({settings.thinking.budget_tokens})"
                )
            if gen.temperature is not None:
                raise ValueError(f"models.generation.{role}.temperature must be unset: thinking forbids it")


class AnthropicMessagesProvider:
    name = "anthropic"

    def __init__(self, model: str, ctx: BuildContext):
        self.model = model
        self.settings: AnthropicSettings = ctx.settings
        self.retry = ctx.models.retry
        self.prices = ctx.models.prices
        self.limit = ctx.limit
        # Made on the first call the cache cannot answer: a cached rerun, or a stage that never
        # calls this API, does not import its SDK (about 2 s for anthropic, 1 s for openai).
        self.client = load_once(self._new_client)
        self.base_url = ENDPOINT.base_url(self.settings.base_url)

    def _new_client(self) -> Any:
        import anthropic

        return anthropic.Anthropic(
            api_key=api_key(ENDPOINT.key_env),
            base_url=self.base_url,
            max_retries=0,  # retries are ours: counted, logged, with the fallback after them
            timeout=self.retry.attempt_timeout_s,
        )

    def identity(self) -> dict[str, Any]:
        return {"provider": self.name, "base_url": self.base_url, "thinking": self.settings.thinking.model_dump()}

    def max_in_flight(self) -> int:
        return self.settings.max_in_flight

    def classify(self, error: Exception) -> Failure | None:
        import anthropic

        return classify_sdk_error(
            error, anthropic, url=self.base_url, provider=self.name, model=self.model, key_env=ENDPOINT.key_env
        )

    def params(self, request: LLMRequest) -> dict[str, Any]:
        system = request.system
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [m.model_dump() for m in request.messages],
        }
        if self.settings.thinking.enabled:
            params["thinking"] = {"type": "enabled", "budget_tokens": self.settings.thinking.budget_tokens}
        elif request.temperature is not None:
            params["temperature"] = request.temperature
        if request.response_schema is not None:
            params["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": f"Submit the answer as a {request.response_schema.__name__} object.",
                    "input_schema": request.response_json_schema(),
                }
            ]
            params["tool_choice"] = {"type": "auto"}
            system += TOOL_INSTRUCTION
        params["system"] = system
        return params

    def complete(self, request: LLMRequest) -> LLMResponse:
        params = self.params(request)

        client = self.client()
        import anthropic  # loaded with the client, on the first call

        def call() -> StreamedMessage:
            # The SDK's post() sends the request and raises its HTTP errors as usual; the events
            # are then read as plain JSON (messages.stream() builds a pydantic object for every
            # event, the larger part of the client's CPU per call).
            stream = client.post(
                "/v1/messages",
                body=params | {"stream": True},
                cast_to=anthropic.types.Message,
                stream=True,
                stream_cls=anthropic.Stream[anthropic.types.RawMessageStreamEvent],
            )
            with stream:
                return read_stream(anthropic, stream.response)

        answered = call_with_retries(
            call, classify=self.classify, provider=self.name, model=self.model, settings=self.retry, limit=self.limit
        )
        message = answered.value
        texts = [b["text"] for b in message.blocks if b["type"] == "text"]
        thinking = [b["text"] for b in message.blocks if b["type"] == "thinking"]
        tool = next((b for b in message.blocks if b["type"] == "tool_use" and b["name"] == TOOL_NAME), None)
        # With a schema, the tool's input is the answer (as it came, when it is not JSON); a model
        # that answered in text instead gets its text validated (and re-asked) by the client.
        if tool is not None:
            text = tool["text"] if tool["input"] is None else json.dumps(tool["input"], ensure_ascii=False)
        else:
            text = "".join(texts).strip()
        usage = Usage(
            calls=1,
            input_tokens=message.input_tokens,
            output_tokens=message.output_tokens,  # includes the thinking tokens
            retries=answered.retries,
        )
        model = f"anthropic/{message.model or self.model}"
        return LLMResponse(
            text=text,
            model=model,
            usage=with_cost(usage, f"anthropic/{self.model}", self.prices),
            latency_s=answered.latency_s,
            queue_s=answered.queue_s,
            thinking="\n\n".join(thinking) or None,
            finish_reason=message.stop_reason,
        )


@dataclass
class StreamedMessage:
    """What a streamed Messages API reply adds up to."""

    model: str | None = None
    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    blocks: list[dict[str, Any]] = field(default_factory=list)  # type, text, name, input (tool_use)


def read_stream(sdk: Any, response: Any) -> StreamedMessage:
    """Add up the server-sent events of a Messages API stream (message_start, content blocks and
    their deltas, message_delta). An `error` event (e.g. overloaded_error inside a 200 stream) is
    raised as the SDK raises it: an APIStatusError carrying the event's body."""
    message = StreamedMessage()
    blocks: dict[int, dict[str, Any]] = {}  # by the index the events give
    pieces: dict[int, list[str]] = {}
    for event in sdk.Stream.raw_events(response):
        if event.event == "error":
            try:
                body: Any = event.json()
            except ValueError:
                body = event.data
            raise sdk.APIStatusError(f"{body}", response=response, body=body)
        if event.event in (None, "ping") or not event.data:
            continue
        data = event.json()
        kind = data.get("type")
        if kind == "message_start":
            start = data["message"]
            message.model = start.get("model")
            message.input_tokens = start.get("usage", {}).get("input_tokens", 0)
            message.output_tokens = start.get("usage", {}).get("output_tokens", 0)
        elif kind == "content_block_start":
            block = data["content_block"]
            blocks[data["index"]] = {"type": block["type"], "name": block.get("name"), "input": block.get("input")}
            pieces[data["index"]] = [block.get("text") or block.get("thinking") or ""]
        elif kind == "content_block_delta":
            delta = data["delta"]
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            if piece and delta["type"] != "signature_delta":
                pieces[data["index"]].append(piece)
        elif kind == "message_delta":
            message.stop_reason = data.get("delta", {}).get("stop_reason") or message.stop_reason
            usage = data.get("usage") or {}
            message.output_tokens = usage.get("output_tokens", message.output_tokens)  # a running total
            message.input_tokens = usage.get("input_tokens") or message.input_tokens
    for index in sorted(blocks):
        block, joined = blocks[index], "".join(pieces[index])
        if block["type"] == "tool_use":
            try:
                block["input"] = json.loads(joined) if joined else (block["input"] or {})
            except ValueError:  # cut off at max_tokens mid-JSON: the client validates (and re-asks)
                block["input"], block["text"] = None, joined
        else:
            block["text"] = joined
        message.blocks.append(block)
    return message


register(ProviderSpec("anthropic", AnthropicMessagesProvider, AnthropicSettings, ENDPOINT, check=check))
