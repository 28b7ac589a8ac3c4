"""A provider that answers with a second model when the first stays overloaded after its retries."""

from __future__ import annotations

import logging
from typing import Any

from chareval.llm.base import LLMRequest, LLMResponse, Provider
from chareval.remote.retry import Failure, OverloadedError

log = logging.getLogger(__name__)


class FallbackProvider:
    def __init__(self, primary: Provider, fallback: Provider, fallback_model: str):
        self.name = primary.name
        self.primary = primary
        self.fallback = fallback
        self.fallback_model = fallback_model

    def identity(self) -> dict[str, Any]:
        return {
            "primary": self.primary.identity(),
            "fallback": self.fallback.identity(),
            "fallback_model": self.fallback_model,
        }

    def max_in_flight(self) -> int:
        return self.primary.max_in_flight()

    def classify(self, error: Exception) -> Failure | None:
        return self.primary.classify(error)

    def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            return self.primary.complete(request)
        except OverloadedError as e:
            log.warning("%s overloaded (%s): falling back to %s", request.model, e.message, self.fallback_model)
        response = self.fallback.complete(request.model_copy(update={"model": self.fallback_model}))
        usage = response.usage.model_copy(update={"fallbacks": response.usage.fallbacks + 1})
        return response.model_copy(update={"usage": usage})
