"""The one client interface: stages build an LLMRequest and get an LLMResponse, whatever the provider."""

from __future__ import annotations

import copy
import functools
import hashlib
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from chareval.remote.retry import Failure
from chareval.schemas import Speaker, Usage

# Sampling temperature of the local engines when a role sets none.
DEFAULT_TEMPERATURE = 0.7


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Speaker
    content: str


class LLMRequest(BaseModel):
    """One model call. `model` is provider/model; `response_schema` asks for structured output."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: str
    system: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int
    temperature: float | None = None
    seed: int | None = None
    response_schema: type[BaseModel] | None = None

    def wire_params(self) -> dict[str, Any]:
        """Everything that determines the answer, as plain JSON (for cache keys)."""
        data = self.model_dump(exclude={"response_schema"})
        data["response_schema"] = json_schema(self.response_schema) if self.response_schema else None
        return data

    def response_json_schema(self) -> dict[str, Any]:
        """The response schema as JSON schema (a copy: providers adapt it)."""
        assert self.response_schema is not None
        return copy.deepcopy(json_schema(self.response_schema))


@functools.cache
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """pydantic's JSON schema of a model, made once per class: it takes about a millisecond, on
    every call otherwise (the cache key and the request both need it)."""
    return model.model_json_schema()


class LLMResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    parsed: Any = None
    model: str  # the model that actually answered (differs from the request after a fallback)
    usage: Usage
    latency_s: float  # the model's answer time (the successful attempt), without any wait for a slot
    queue_s: float = 0.0  # the wait for an in-flight slot of the provider
    thinking: str | None = None
    finish_reason: str | None = None
    cached: bool = False

    @property
    def hit_token_limit(self) -> bool:
        """The reply stopped at max_tokens (OpenAI-style "length", Anthropic's "max_tokens"): it is cut off."""
        return self.finish_reason in ("length", "max_tokens")


class Provider(Protocol):
    """A backend that answers requests. `identity` names everything besides the request that
    changes the answer (endpoint, model file) and goes into the cache key; never a secret.
    `max_in_flight` is how many calls it takes at once; `classify` says how a failure of its SDK is
    retried (None: not an API failure)."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def complete(self, request: LLMRequest) -> LLMResponse: ...

    def max_in_flight(self) -> int: ...

    def classify(self, error: Exception) -> Failure | None: ...


def with_cost(usage: Usage, model: str, prices: dict) -> Usage:
    """Fill in the cost from the price table (USD per million tokens) when the provider gave none."""
    price = prices.get(model)
    if usage.cost_usd or price is None:
        return usage
    cost = (usage.input_tokens * price.input_per_mtok + usage.output_tokens * price.output_per_mtok) / 1e6
    return usage.model_copy(update={"cost_usd": cost})


def derive_seed(seed: int, *parts: object) -> int:
    """A per-call seed from the run seed and the item's identity: reproducible in any order."""
    digest = hashlib.sha256("\x1f".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(digest[:8], 16)


T = TypeVar("T")


def load_once(load: Callable[..., T]) -> Callable[..., T]:
    """Cache a model load per arguments, and serialise loads: functools.cache alone lets several
    threads that miss at once (conversations beside a hosted model) each load the same model."""
    cached = functools.cache(load)
    lock = threading.Lock()

    @functools.wraps(load)
    def serialised(*args: Any) -> T:
        with lock:
            return cached(*args)

    serialised.cache_clear = cached.cache_clear  # type: ignore[attr-defined]  # forget what was loaded
    return serialised
