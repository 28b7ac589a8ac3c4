"""What stages call: picks the provider for a role, serves repeats from the cache, validates
structured output (one re-ask), and adds every call's usage to a meter."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict

from pydantic import BaseModel, ValidationError

from chareval.config import Models, Role
from chareval.errors import ConfigError, StructuredOutputError
from chareval.llm import registry
from chareval.llm.base import ChatMessage, LLMRequest, LLMResponse, Provider
from chareval.llm.budget import Spending
from chareval.llm.cache import DiskCache
from chareval.llm.plan import Planner
from chareval.remote.limits import InFlightLimit
from chareval.schemas import Usage
from chareval.store.traces import Tracer

log = logging.getLogger(__name__)

REASK = "Your reply could not be used: {error}\nReply again with only the JSON object, following the schema exactly."


class UsageMeter:
    """Thread-safe usage totals per role, the time the models took to answer, the time calls waited
    for an in-flight slot, and how many replies were cut off at max_tokens (kept here, not in
    `Usage`, which records carry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_role: dict[str, Usage] = defaultdict(Usage)
        self.latency_s = 0.0
        self.queue_s = 0.0
        self.truncated_by_role: dict[str, int] = defaultdict(int)

    def add(self, role: str, usage: Usage, latency_s: float = 0.0, queue_s: float = 0.0) -> None:
        with self._lock:
            self.by_role[role] = self.by_role[role] + usage
            self.latency_s += latency_s
            self.queue_s += queue_s

    def add_truncated(self, role: str) -> bool:
        """Count a cut-off reply; True the first time for this role (warn once, not on every call)."""
        with self._lock:
            self.truncated_by_role[role] += 1
            return self.truncated_by_role[role] == 1

    @property
    def truncated(self) -> int:
        with self._lock:
            return sum(self.truncated_by_role.values())

    def total(self) -> Usage:
        with self._lock:
            return sum(self.by_role.values(), Usage())

    def roles(self) -> dict[str, Usage]:
        """Usage per role or purpose (assistant, user, judge, breach_check, attacker, ...)."""
        with self._lock:
            return dict(self.by_role)


class LLMClient:
    def __init__(
        self,
        models: Models,
        cache: DiskCache | None,
        registry: str | None = None,
        *,
        planner: Planner | None = None,
        spending: Spending | None = None,
    ):
        self.models = models
        self.registry = registry  # the fine-tuned models registry, for local_lora/<name>
        self.cache = cache
        # dry_run=true: calls the cache cannot answer are counted and answered by stand-ins.
        self.planner = planner
        self.spending = spending  # budget.*: what the job has spent, against its limit
        self.meter = UsageMeter()
        self.tracer = Tracer()  # set per stage run by the stage runner (off until then)
        self._providers: dict[str, Provider] = {}
        self.limits: dict[str, InFlightLimit] = {}
        self._lock = threading.Lock()

    def for_models(self, models: Models) -> LLMClient:
        """A client for another set of models (the closed loop's student) that shares this one's
        cache, plan and budget: they belong to the command, not to a seat."""
        return LLMClient(models, self.cache, self.registry, planner=self.planner, spending=self.spending)

    def provider(self, model: str) -> Provider:
        with self._lock:
            if model not in self._providers:
                self._providers[model] = registry.build(model, self.models, self._limit, self.registry)
            return self._providers[model]

    def _limit(self, provider: str, ceiling: int) -> InFlightLimit:
        """One in-flight limit per provider, shared by every role and thread of this client."""
        if provider not in self.limits:
            self.limits[provider] = InFlightLimit(provider, ceiling)
        return self.limits[provider]

    def parallelism(self, models: list[str]) -> int:
        """How many work items to run at once so that every slot of these models' providers stays
        busy: an item (a conversation, a judgment) holds at most one slot at a time, so the sum of
        the providers' limits, doubled so that an item between two calls (writing, parsing, or
        queued at the other provider) does not leave a slot idle (a local model: one item)."""
        limits = {}
        for model in models:
            provider = self._provider_for(model)
            limits[model.split("/", 1)[0]] = provider.max_in_flight() if provider else 1
        total = sum(limits.values()) or 1
        return total if total == 1 else 2 * total

    def model_for(self, role: str) -> str:
        return getattr(self.models, role)

    def ask(
        self,
        role: Role,
        system: str,
        messages: list[ChatMessage],
        *,
        seed: int | None,
        schema: type[BaseModel] | None = None,
        model: str | None = None,
        purpose: str | None = None,
    ) -> LLMResponse:
        """One call for a role (contexts, assistant, user, judge) with that role's settings and
        model (or `model`, e.g. one of several judges). `purpose` counts it apart in the usage
        figures and names its span (e.g. the breach check, which runs on the judge's settings)."""
        gen = self.models.generation.get(role)
        if gen is None:
            raise ConfigError(
                f"models.generation.{role} is not set",
                f"add max_tokens for {role} in conf/models/{self.models.name}.yaml",
            )
        request = LLMRequest(
            model=model or self.model_for(role),
            system=system,
            messages=messages,
            max_tokens=gen.max_tokens,
            temperature=gen.temperature,
            seed=seed,
            response_schema=schema,
        )
        return self.complete(request, role=purpose or role)

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
                cut = ""
                if second.hit_token_limit:
                    cut = f' (finish_reason="length": the reply stopped at max_tokens={request.max_tokens})'
                schema = request.response_schema.__name__
                raise StructuredOutputError(
                    f"{second.model} did not return a valid {schema} after one re-ask{cut}: {_short(e)}",
                    raw_text=second.text,
                ) from None

    @staticmethod
    def _parsed(response: LLMResponse, schema: type[BaseModel]) -> LLMResponse:
        # strict=False accepts raw newlines inside strings, which small models often write.
        data = json.loads(response.text, strict=False)
        return response.model_copy(update={"parsed": schema.model_validate(data)})

    def _call(self, request: LLMRequest, role: str) -> LLMResponse:
        with self.tracer.call(request, role) as span:
            response = self._answer(request, role)
            span.answered(response)
        return response

    def _answer(self, request: LLMRequest, role: str) -> LLMResponse:
        provider = self._provider_for(request.model)
        cache = self.cache
        key = DiskCache.key(provider.identity(), request) if cache and provider else None
        if cache and key:
            hit = cache.get(key)
            if hit is not None:
                self.meter.add(role, Usage(cached_calls=1))
                if self.planner:
                    self.planner.cached(role, request)
                self._note_truncation(hit, request, role)
                return hit.model_copy(update={"cached": True})
        if self.planner:  # a stand-in, never cached: it is not an answer
            return self.planner.answer(role, request, provider)
        assert provider is not None
        reservation = self.spending.reserve(role, request, provider) if self.spending else (0.0, 0)
        response = None
        try:
            response = provider.complete(request)
        finally:
            if self.spending:
                self.spending.settle(reservation, response.usage if response else None)
        self.meter.add(role, response.usage, response.latency_s, response.queue_s)
        self._note_truncation(response, request, role)
        if cache and key:
            cache.put(key, response)
        return response

    def _provider_for(self, model: str) -> Provider | None:
        """The model's provider. In a dry run, None for one that does not exist yet (the model the
        closed loop is about to fine-tune): the cache cannot have answered its calls."""
        if not self.planner:
            return self.provider(model)
        try:
            return self.provider(model)
        except ConfigError:
            return None

    def _note_truncation(self, response: LLMResponse, request: LLMRequest, role: str) -> None:
        if response.hit_token_limit and self.meter.add_truncated(role):
            log.warning(
                "%s: a reply from %s stopped at max_tokens=%d and is cut off (more are counted in the "
                "model.truncated metric); raise models.generation.%s.max_tokens if it matters",
                role,
                response.model,
                request.max_tokens,
                role,
            )


def _short(err: ValueError) -> str:
    if not isinstance(err, ValidationError):
        return f"not valid JSON: {err}"
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "reply"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
