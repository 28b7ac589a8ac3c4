"""Scripted replies and no model at all (mock/<any name>), like inspect_ai's mockllm: the fast test
tier runs every stage on it. A reply is the next of models.providers.mock.replies when there are
any, else a line naming the model and the turn; with a schema it is the next of the model's
models.providers.mock.scripted answers, else the smallest valid JSON object.
A reply longer than max_tokens (counted in words) is cut there with finish_reason "length", as a
real model's would be."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from pydantic import Field

from chareval.llm.base import LLMRequest, LLMResponse
from chareval.llm.examples import example
from chareval.llm.registry import BuildContext, ProviderSettings, ProviderSpec, register
from chareval.schemas import Usage


class MockSettings(ProviderSettings):
    """models.providers.mock (values in conf/provider/mock.yaml)."""

    max_in_flight: int = Field(ge=1)
    replies: list[str]  # cycled through, for plain (not structured) requests
    # model name -> JSON answers to its structured requests, in order, cycled (e.g. the breach
    # check's verdicts for mock/judge); a model not named answers with the schema's smallest object.
    scripted: dict[str, list[str]]


class MockProvider:
    name = "mock"

    def __init__(self, model: str, ctx: BuildContext):
        self.model = model
        self.settings: MockSettings = ctx.settings
        self._replies = itertools.cycle(self.settings.replies) if self.settings.replies else None
        script = self.settings.scripted.get(model)
        self._scripted = itertools.cycle(script) if script else None
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "replies": self.settings.replies,
            "scripted": self.settings.scripted.get(self.model),
        }

    def max_in_flight(self) -> int:
        return self.settings.max_in_flight

    def classify(self, error: Exception) -> None:
        return None

    def complete(self, request: LLMRequest) -> LLMResponse:
        if request.response_schema is not None and self._scripted is not None:
            with self._lock:
                text = next(self._scripted)
        elif request.response_schema is not None:
            text = json.dumps(example(request.response_schema.model_json_schema()))
        elif self._replies is not None:
            with self._lock:
                text = next(self._replies)
        else:
            text = f"{self.model} reply {len(request.messages)} (seed {request.seed})"
        words = sum(len(m.content.split()) for m in request.messages) + len(request.system.split())
        reply = text.split(" ")
        finish_reason = "length" if len(reply) > request.max_tokens else "stop"
        text = " ".join(reply[: request.max_tokens])
        return LLMResponse(
            text=text,
            model=f"mock/{self.model}",
            latency_s=0.0,
            finish_reason=finish_reason,
            usage=Usage(calls=1, input_tokens=words, output_tokens=len(text.split())),
        )


register(ProviderSpec("mock", MockProvider, MockSettings, free=True))
