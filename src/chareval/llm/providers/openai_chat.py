"""The OpenAI chat-completions client (openai SDK) that the OpenRouter, OpenAI-compatible and Together
providers share (each in its own module, with its settings). Structured output through
response_format json_schema; on OpenRouter only providers that honour it are used. Reasoning
(Qwen3's <think> blocks) is kept aside."""

from __future__ import annotations

import copy
import re
from typing import Any

from chareval.llm.base import LLMRequest, LLMResponse, load_once, with_cost
from chareval.llm.registry import BuildContext
from chareval.remote.keys import Endpoint, api_key
from chareval.remote.retry import Failure, call_with_retries, classify_sdk_error
from chareval.schemas import Usage

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def split_thinking(content: str) -> tuple[str, str | None]:
    """Text without <think>…</think> blocks (an unclosed one runs to the end), and the blocks."""
    blocks = [m.strip() for m in THINK.findall(content)]
    return THINK.sub("", content).strip(), "\n\n".join(b for b in blocks if b) or None


def strict_schema(schema: dict) -> dict:
    """JSON schema for strict mode: no additional properties on any object."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                node.setdefault("additionalProperties", False)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


class OpenAIChatProvider:
    """`name` is the provider prefix of the model strings it serves (openrouter, openai_compatible, together)."""

    def __init__(
        self,
        name: str,
        model: str,
        ctx: BuildContext,
        endpoint: Endpoint,
        *,
        key_env: str | None = None,
        require_parameters: bool = False,
        report_cost: bool = False,
    ):
        self.name = name
        self.model = model
        self.settings = ctx.settings
        self.key_env = key_env or endpoint.key_env
        self.base_url = endpoint.base_url(ctx.settings.base_url)
        self.retry = ctx.models.retry
        self.prices = ctx.models.prices
        self.limit = ctx.limit
        # Made on the first call the cache cannot answer: a cached rerun, or a stage that never
        # calls this API, does not import its SDK (about 2 s for anthropic, 1 s for openai).
        self.client = load_once(self._new_client)
        self.require_parameters = require_parameters
        self.report_cost = report_cost

    def _new_client(self) -> Any:
        import openai

        return openai.OpenAI(
            api_key=api_key(self.key_env) or "not-needed",  # self-hosted servers often take no key
            base_url=self.base_url,
            max_retries=0,
            timeout=self.retry.attempt_timeout_s,
        )

    def identity(self) -> dict[str, Any]:
        return {"provider": self.name, "base_url": self.base_url}

    def max_in_flight(self) -> int:
        return self.settings.max_in_flight

    def classify(self, error: Exception) -> Failure | None:
        import openai

        return classify_sdk_error(
            error, openai, url=self.base_url, provider=self.name, model=self.model, key_env=self.key_env
        )

    def params(self, request: LLMRequest) -> dict[str, Any]:
        """The request body, as plain JSON (OpenRouter's own fields beside the standard ones)."""
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": request.system}, *(m.model_dump() for m in request.messages)],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.seed is not None:
            params["seed"] = request.seed
        if request.response_schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.response_schema.__name__,
                    "strict": True,
                    "schema": strict_schema(request.response_json_schema()),
                },
            }
            if self.require_parameters:
                params["provider"] = {"require_parameters": True}
        if self.report_cost:
            params["usage"] = {"include": True}  # OpenRouter then reports the cost of the call
        return params

    def complete(self, request: LLMRequest) -> LLMResponse:
        params = self.params(request)
        client = self.client()
        from openai.types.chat import ChatCompletion  # loaded with the client, on the first call

        answered = call_with_retries(
            # The SDK's post() with the body as it is: chat.completions.create() would first walk
            # the body against its typed parameters (half of the client's CPU per call), which
            # changes nothing in a body of plain JSON.
            lambda: client.post("/chat/completions", body=params, cast_to=ChatCompletion),
            classify=self.classify,
            provider=self.name,
            model=self.model,
            settings=self.retry,
            limit=self.limit,
        )
        response = answered.value
        choice = response.choices[0]
        text, thinking = split_thinking(choice.message.content or "")
        reasoning = (choice.message.model_extra or {}).get("reasoning")
        if reasoning and not thinking:
            thinking = reasoning
        raw_usage = response.usage
        extra_usage = (raw_usage.model_extra or {}) if raw_usage else {}
        usage = Usage(
            calls=1,
            input_tokens=raw_usage.prompt_tokens if raw_usage else 0,
            output_tokens=raw_usage.completion_tokens if raw_usage else 0,
            thinking_tokens=_reasoning_tokens(raw_usage),
            cost_usd=float(extra_usage.get("cost") or 0.0),
            retries=answered.retries,
        )
        return LLMResponse(
            text=text,
            model=f"{self.name}/{response.model or self.model}",
            usage=with_cost(usage, f"{self.name}/{self.model}", self.prices),
            latency_s=answered.latency_s,
            queue_s=answered.queue_s,
            thinking=thinking,
            finish_reason=choice.finish_reason,
        )


def _reasoning_tokens(usage: Any) -> int:
    details = getattr(usage, "completion_tokens_details", None) if usage else None
    return int(getattr(details, "reasoning_tokens", 0) or 0) if details else 0
