"""Retries for hosted APIs: transient failures are retried with exponential backoff and jitter
(honouring retry-after); the rest fail fast with a message naming the provider and the fix."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from chareval.config import RetrySettings
from chareval.errors import ModelError
from chareval.llm.keys import KEY_ENV

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class OverloadedError(ModelError):
    """The provider stayed overloaded through every retry: the cue for a fallback model."""


@dataclass
class Failure:
    status: int | None  # None: connection error or timeout
    overloaded: bool
    retry_after: float | None
    detail: str

    @property
    def retryable(self) -> bool:
        return self.status is None or self.overloaded or self.status in RETRYABLE_STATUS or self.status >= 500


def classify(error: Exception) -> Failure | None:
    """An SDK exception (anthropic, openai, together) as a Failure; None if it is not an API error."""
    name = type(error).__name__
    if name in ("APIConnectionError", "APITimeoutError") or isinstance(error, (ConnectionError, TimeoutError)):
        return Failure(None, False, None, f"{name}: {error}")
    status = getattr(error, "status_code", None)
    if not isinstance(status, int):
        return None
    body = getattr(error, "body", None)
    error_type = getattr(error, "type", None)
    if error_type is None and isinstance(body, dict):
        inner = body.get("error", body)
        error_type = inner.get("type") if isinstance(inner, dict) else None
    message = getattr(error, "api_message", None) or getattr(error, "message", None) or str(error)
    headers = getattr(getattr(error, "response", None), "headers", {}) or {}
    # An error event inside a 200 stream carries its real type in the body.
    overloaded = status == 529 or error_type == "overloaded_error"
    return Failure(status, overloaded, _retry_after(headers), f"{status} {error_type or ''} {message}".strip())


def _retry_after(headers) -> float | None:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def fail_fast_message(provider: str, model: str, failure: Failure) -> ModelError:
    key = KEY_ENV.get(provider, "the provider's API key")
    fixes = {
        401: f"set a valid {key} in the environment or in .env",
        402: f"add credits to the {provider} account",
        403: f"check that the key in {key} may use {model}",
        404: f"check the model id '{model}' and the {provider} base URL",
    }
    return ModelError(
        f"{provider} refused the request for {model}: {failure.detail}",
        fixes.get(failure.status, "check the request settings (model, max_tokens) in conf/models/"),
    )


def call_with_retries(
    call: Callable[[], T], *, provider: str, model: str, settings: RetrySettings
) -> tuple[T, int]:
    """Run `call`, retrying transient failures. Returns (result, number of retries)."""
    deadline = time.monotonic() + settings.total_timeout_s
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return call(), attempt - 1
        except Exception as error:  # classified below; anything unknown is re-raised
            failure = classify(error)
            if failure is None:
                raise
            if not failure.retryable:
                raise fail_fast_message(provider, model, failure) from None
            remaining = deadline - time.monotonic()
            if attempt == settings.max_attempts or remaining <= 0:
                kind = OverloadedError if failure.overloaded else ModelError
                raise kind(
                    f"{provider} failed for {model} after {attempt} attempts: {failure.detail}",
                    "try again later, or raise models.retry.max_attempts / total_timeout_s",
                ) from None
            backoff = min(settings.max_backoff_s, settings.initial_backoff_s * 2 ** (attempt - 1))
            delay = failure.retry_after if failure.retry_after is not None else backoff * random.uniform(0.5, 1.0)
            delay = min(delay, remaining)
            log.info("%s %s: %s; retry %d in %.1f s", provider, model, failure.detail, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
