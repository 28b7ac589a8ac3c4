"""An SDK client made on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lazy(Generic[T]):
    """`make()`'s result, made once, by the first thread that asks. SDK clients are made this way so
    that a cached rerun, or a stage that never calls the API, does not import the SDK (about 2 s for
    anthropic, 1 s for openai)."""

    def __init__(self, make: Callable[[], T]):
        self.make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self.make()
        return self._value
