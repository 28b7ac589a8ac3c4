"""What stages call: picks the provider for a role, serves repeats from the cache, validates
structured output (one re-ask), and adds every call's usage to a meter."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict

from pydantic import BaseModel, ValidationError

from chareval.config import Models
from chareval.errors import ConfigError, StructuredOutputError
from chareval.llm.base import ChatMessage, LLMRequest, LLMResponse, Provider
from chareval.llm.cache import DiskCache
from chareval.llm.providers import build_provider
from chareval.schemas import Usage

log = logging.getLogger(__name__)

REASK = (
    "Your reply could not be used: {error}\n"
    "Reply again with only the JSON object, following the schema exactly."
)


class UsageMeter:
    """Thread-safe usage totals per role, and the time spent waiting on models."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_role: dict[str, Usage] = defaultdict(Usage)
        self.latency_s = 0.0

    def add(self, role: str, usage: Usage, latency_s: float = 0.0) -> None:
        with self._lock:
            self.by_role[role] = self.by_role[role] + usage
            self.latency_s += latency_s

    def total(self) -> Usage:
        with self._lock:
            return sum(self.by_role.values(), Usage())


class LLMClient:
    def __init__(self, models: Models, cache: DiskCache | None, meter: UsageMeter | None = None, registry: str | None = None):
        self.models = models
        self.registry = registry  # the fine-tuned models registry, for local_lora/<name>
        self.cache = cache
        self.meter = meter or UsageMeter()
        self._providers: dict[str, Provider] = {}
        self._slots: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def provider(self, model: str) -> Provider:
        with self._lock:
            if model not in self._providers:
                self._providers[model] = build_provider(model, self.models, self._slot, self.registry)
            return self._providers[model]

    def _slot(self, provider: str, limit: int) -> threading.Semaphore:
        """One in-flight limit per provider, shared by every role and thread of this client."""
        if provider not in self._slots:
            self._slots[provider] = threading.BoundedSemaphore(limit)
        return self._slots[provider]

    def parallelism(self, models: list[str]) -> int:
        """How many work items may usefully run at once on these models (local: one)."""
        limits = []
        for model in models:
            provider = model.split("/", 1)[0]
            settings = getattr(self.models.providers, provider, None)
            limits.append(1 if provider in ("local", "local_lora") else getattr(settings, "max_in_flight", 4))
        return max(limits or [1])

    def model_for(self, role: str) -> str:
        return getattr(self.models, role)

    def ask(
        self,
        role: str,
        system: str,
        messages: list[ChatMessage],
        *,
        seed: int | None,
        schema: type[BaseModel] | None = None,
        model: str | None = None,
    ) -> LLMResponse:
        """One call for a role (contexts, assistant, user, judge) with that role's settings and
        model (or `model`, e.g. one of several judges)."""
        gen = self.models.generation.get(role)
        if gen is None:
            raise ConfigError(f"models.generation.{role} is not set", f"add max_tokens for {role} in conf/models/{self.models.name}.yaml")
        request = LLMRequest(
            model=model or self.model_for(role),
            system=system,
            messages=messages,
            max_tokens=gen.max_tokens,
            temperature=gen.temperature,
            seed=seed,
            response_schema=schema,
        )
        return self.complete(request, role=role)

    def complete(self, request: LLMRequest, *, role: str = "other") -> LLMResponse:
        response = self._call(request, role)
        if request.response_schema is None:
            return response
        try:
            return self._parsed(response, request.response_schema)
        except ValueError as first_error:  # pydantic's ValidationError and JSON errors
            log.info("%s reply failed validation, asking once more: %s", request.model, _short(first_error))
            reask = request.model_copy(
                update={
                    "messages": [
                        *request.messages,
                        ChatMessage(role="assistant", content=response.text or "(empty)"),
                        ChatMessage(role="user", content=REASK.format(error=_short(first_error))),
                    ]
                }
            )
            second = self._call(reask, role)
            try:
                return self._parsed(second, request.response_schema)
            except ValueError as e:
                raise StructuredOutputError(
                    f"{second.model} did not return a valid {request.response_schema.__name__} after one re-ask: {_short(e)}",
                    raw_text=second.text,
                ) from None

    @staticmethod
    def _parsed(response: LLMResponse, schema: type[BaseModel]) -> LLMResponse:
        # strict=False accepts raw newlines inside strings, which small models often write.
        data = json.loads(response.text, strict=False)
        return response.model_copy(update={"parsed": schema.model_validate(data)})

    def _call(self, request: LLMRequest, role: str) -> LLMResponse:
        provider = self.provider(request.model)
        key = DiskCache.key(provider.identity(), request) if self.cache else None
        if key:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.add(role, Usage(cached_calls=1))
                return hit.model_copy(update={"cached": True})
        response = provider.complete(request)
        self.meter.add(role, response.usage, response.latency_s)
        if key:
            self.cache.put(key, response)
        return response


def _short(err: ValueError) -> str:
    if not isinstance(err, ValidationError):
        return f"not valid JSON: {err}"
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "reply"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
