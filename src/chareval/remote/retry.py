"""Retries for hosted APIs. Each provider classifies its own SDK's exceptions into a Failure (retry,
overloaded, or fatal with a fix); this module only does the HTTP semantics every API shares and the
backoff loop: exponential with jitter, honouring retry-after."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from chareval.config import RetrySettings
from chareval.errors import ModelError
from chareval.remote.limits import InFlightLimit, Slot

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


class OverloadedError(ModelError):
    """The provider stayed overloaded through every retry: the cue for a fallback model."""


@dataclass(frozen=True)
class Failure:
    """How a failed call is treated: retried (after retry_after when the server said so; `overloaded`
    is retried too, then falls back), or fatal at once with the fix."""

    kind: Literal["retry", "overloaded", "fatal"]
    detail: str
    retry_after: float | None = None
    fix: str | None = None
    rate_limited: bool = False  # a 429: the provider's in-flight limit shrinks
    status: int | None = None  # the HTTP status, when the server answered


class RefusedError(ModelError):
    """The server answered with a status that is no use retrying (401, 404, …)."""

    def __init__(self, message: str, fix: str | None, status: int | None):
        super().__init__(message, fix)
        self.status = status


@dataclass(frozen=True)
class Answered(Generic[T]):
    """What call_with_retries returns: the result and what it took."""

    value: T
    retries: int
    latency_s: float  # the answering attempt's time, from getting its slot to its result
    queue_s: float  # the time every attempt waited for a slot (and for a retry-after pause)


def connection_failure(error: Exception, url: str | None) -> Failure:
    """No answer from the server (refused, reset, timed out): retried; the message names where."""
    return Failure(
        "retry",
        f"{type(error).__name__} at {url or 'the default URL'}: {error}",
        fix="check that the server at that URL is up and reachable (its base_url setting or *_BASE_URL variable)",
    )


def http_failure(
    status: int,
    detail: str,
    headers: Mapping[str, str] | None,
    *,
    provider: str,
    model: str,
    key_env: str | None,
    overloaded: bool = False,
) -> Failure:
    """What an HTTP status means for any API: transient ones are retried, the rest fail with the fix."""
    if overloaded or status == 529:
        return Failure("overloaded", detail, retry_after(headers or {}))
    if status in RETRYABLE_STATUS or status >= 500:
        return Failure("retry", detail, retry_after(headers or {}), rate_limited=status == 429)
    key = key_env or "the provider's API key"
    fixes = {
        401: f"set a valid {key_env} in the environment or in .env"
        if key_env
        else f"the server wants a key: name its variable in models.providers.{provider}.api_key_env",
        402: f"add credits to the {provider} account",
        403: f"check that the key in {key} may use {model}",
        404: f"check the model id '{model}' and the {provider} base URL",
    }
    return Failure(
        "fatal",
        detail,
        fix=fixes.get(status, "check the request settings (model, max_tokens) in conf/models/"),
        status=status,
    )


def status_error_failure(error: Exception, *, provider: str, model: str, key_env: str | None) -> Failure:
    """An SDK's API status error (anthropic, openai and together share the layout: status_code, body,
    message, response) as a Failure. An error event inside a 200 stream carries its type in the body."""
    status = error.status_code  # type: ignore[attr-defined]
    body = getattr(error, "body", None)
    error_type = getattr(error, "type", None)
    if error_type is None and isinstance(body, dict):
        inner = body.get("error", body)
        error_type = inner.get("type") if isinstance(inner, dict) else None
    message = getattr(error, "message", None) or str(error)
    headers = getattr(getattr(error, "response", None), "headers", None)
    detail = f"{status} {error_type or ''} {message}".strip()
    return http_failure(
        status,
        detail,
        headers,
        provider=provider,
        model=model,
        key_env=key_env,
        overloaded=error_type == "overloaded_error",
    )


def classify_sdk_error(
    error: Exception, sdk: Any, *, url: str | None, provider: str, model: str, key_env: str | None
) -> Failure | None:
    """The anthropic, openai and together SDKs share their error classes' names and layout: a
    connection error (timeouts included) is retried, a status error is read by its status."""
    if isinstance(error, (sdk.APIConnectionError, ConnectionError, TimeoutError)):
        return connection_failure(error, url)
    if isinstance(error, sdk.APIStatusError):
        return status_error_failure(error, provider=provider, model=model, key_env=key_env)
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def call_with_retries(
    call: Callable[[], T],
    *,
    classify: Callable[[Exception], Failure | None],
    provider: str,
    model: str,
    settings: RetrySettings,
    limit: InFlightLimit | None = None,
) -> Answered[T]:
    """Run `call` (each attempt in a slot of `limit`), retrying what `classify` calls transient.
    An exception `classify` does not recognise is not an API failure: it is raised as it is."""
    deadline = time.monotonic() + settings.total_timeout_s
    queue_s = 0.0
    for attempt in range(1, settings.max_attempts + 1):
        with limit.slot() if limit else _no_limit() as slot:
            queue_s += slot.queue_s
            try:
                result = call()
            except Exception as error:
                failure = classify(error)
                if failure is None:
                    raise
                if failure.rate_limited and limit:
                    limit.rate_limited(slot, failure.retry_after)
            else:
                if limit:
                    limit.succeeded()
                return Answered(result, attempt - 1, time.monotonic() - slot.started, queue_s)
        if failure.kind == "fatal":
            raise RefusedError(
                f"{provider} refused the request for {model}: {failure.detail}", failure.fix, failure.status
            ) from None
        remaining = deadline - time.monotonic()
        if attempt == settings.max_attempts or remaining <= 0:
            kind = OverloadedError if failure.kind == "overloaded" else ModelError
            raise kind(
                f"{provider} failed for {model} after {attempt} attempts: {failure.detail}",
                failure.fix or "try again later, or raise models.retry.max_attempts / total_timeout_s",
            ) from None
        backoff = min(settings.max_backoff_s, settings.initial_backoff_s * 2 ** (attempt - 1))
        delay = failure.retry_after if failure.retry_after is not None else backoff * random.uniform(0.5, 1.0)
        delay = min(delay, remaining)
        log.info("%s %s: %s; retry %d in %.1f s", provider, model, failure.detail, attempt, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _no_limit() -> Iterator[Slot]:
    yield Slot(queue_s=0.0, started=time.monotonic())
