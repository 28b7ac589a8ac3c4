"""dry_run=true: the command's stages run as they would, but every model call the cache cannot answer
is counted and answered by a stand-in (llm.examples.stand_in, or a line of text) instead of a model.
What a real run would send is thus counted, not guessed, wherever the stages' path does not depend
on what the models say (contexts, conversations of fixed turns, judgments); tokens and cost are
estimated (config: plan.*)."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

from chareval.config import Models, PlanSettings, Price
from chareval.errors import ConfigError
from chareval.llm import registry
from chareval.llm.base import LLMRequest, LLMResponse, Provider, json_schema
from chareval.llm.examples import stand_in
from chareval.schemas import Usage


@dataclass
class Line:
    """The calls of one role (or purpose) on one model."""

    role: str
    model: str
    calls: int = 0  # every request the run sends when nothing is cached
    cache_hits: int = 0  # of those, the ones the cache answers now
    input_tokens: int = 0  # estimated, of the calls the cache does not answer
    output_tokens: int = 0
    thinking_tokens: int = 0
    cost_usd: float = 0.0
    max_cost_usd: float = 0.0  # every reply as long as max_tokens allows (thinking included)
    priced: bool = True  # False: models.prices has no price for the model (its cost counts as 0)


def prompt_tokens(request: LLMRequest, chars_per_token: float) -> int:
    """A request's tokens, estimated from its characters: the system prompt, the messages and, for
    structured output, the JSON schema (which the providers send along)."""
    chars = len(request.system) + sum(len(m.content) + 8 for m in request.messages)
    if request.response_schema is not None:
        chars += len(json.dumps(json_schema(request.response_schema)))
    return math.ceil(chars / chars_per_token)


def thinking_budget(provider: Provider | None) -> int:
    """The thinking budget a provider gives each call (0: none), from its identity, which names
    everything that changes an answer (a fallback's primary answers first)."""
    if provider is None:
        return 0
    identity = provider.identity()
    thinking = identity.get("primary", identity).get("thinking") or {}
    return int(thinking.get("budget_tokens", 0)) if thinking.get("enabled") else 0


@dataclass(frozen=True)
class Estimate:
    """What one call is expected to use (plan.*) and what it can use at most."""

    input_tokens: int
    output_tokens: int
    thinking_tokens: int
    max_output_tokens: int  # max_tokens: the reply, thinking included, cannot be longer

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.thinking_tokens

    def cost_usd(self, price: Price | None) -> float:
        if price is None:
            return 0.0
        billed_out = self.output_tokens + self.thinking_tokens  # thinking is billed as output
        return (self.input_tokens * price.input_per_mtok + billed_out * price.output_per_mtok) / 1e6

    def max_cost_usd(self, price: Price | None) -> float:
        if price is None:
            return 0.0
        return (self.input_tokens * price.input_per_mtok + self.max_output_tokens * price.output_per_mtok) / 1e6


def estimate(role: str, request: LLMRequest, provider: Provider | None, settings: PlanSettings) -> Estimate:
    budget = thinking_budget(provider)
    return Estimate(
        input_tokens=prompt_tokens(request, settings.chars_per_token),
        output_tokens=settings.reply_tokens(role, max(1, request.max_tokens - budget)),
        thinking_tokens=round(budget * settings.thinking_share),
        max_output_tokens=request.max_tokens,
    )


def billed(model: str) -> bool:
    try:
        return registry.spec_for(model).billed
    except ConfigError:  # a provider that does not exist fails the real run; here it has no price
        return True


class Planner:
    """The plan of one command: shared by every client of its job (the closed loop's seats too)."""

    def __init__(self, models: Models, settings: PlanSettings):
        self.models = models
        self.settings = settings
        self.lines: dict[tuple[str, str], Line] = {}
        self.finetune_jobs: list[dict[str, Any]] = []  # the fine-tuning jobs the command would start
        self._lock = threading.Lock()

    def _line(self, role: str, model: str) -> Line:
        key = (role, model)
        if key not in self.lines:
            self.lines[key] = Line(role, model, priced=model in self.models.prices or not billed(model))
        return self.lines[key]

    def cached(self, role: str, request: LLMRequest) -> None:
        with self._lock:
            line = self._line(role, request.model)
            line.calls += 1
            line.cache_hits += 1

    def answer(self, role: str, request: LLMRequest, provider: Provider | None) -> LLMResponse:
        """Count a call the cache cannot answer and give the stage a stand-in reply."""
        expected = estimate(role, request, provider, self.settings)
        price = self.models.prices.get(request.model)
        with self._lock:
            line = self._line(role, request.model)
            line.calls += 1
            line.input_tokens += expected.input_tokens
            line.output_tokens += expected.output_tokens
            line.thinking_tokens += expected.thinking_tokens
            line.cost_usd += expected.cost_usd(price)
            line.max_cost_usd += expected.max_cost_usd(price)
        if request.response_schema is not None:
            text = json.dumps(stand_in(json_schema(request.response_schema)))
        else:
            text = f"(dry run: a stand-in for {request.model}'s reply, {len(request.messages)} message(s) in)"
        return LLMResponse(text=text, model=request.model, usage=Usage(), latency_s=0.0, finish_reason="stop")

    def totals(self) -> dict[str, Any]:
        with self._lock:
            lines = [asdict(line) for line in sorted(self.lines.values(), key=lambda x: (x.role, x.model))]
        total = {
            key: sum(line[key] for line in lines)
            for key in ("calls", "cache_hits", "input_tokens", "output_tokens", "thinking_tokens")
        }
        return total | {
            "requests": total["calls"] - total["cache_hits"],
            "cost_usd": round(sum(line["cost_usd"] for line in lines), 6),
            "max_cost_usd": round(sum(line["max_cost_usd"] for line in lines), 6),
            "unpriced_models": sorted({line["model"] for line in lines if not line["priced"]}),
            "finetune_jobs": list(self.finetune_jobs),
            "by_role_and_model": lines,
        }
