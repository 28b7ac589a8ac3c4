"""A provider's in-flight limit, shared by every role and thread of a job, that adapts to rate limits.

It starts at the configured max_in_flight. A rate-limit answer (429) halves it (once per round of
calls: the other calls of that round that are refused too do not halve it again) and holds every
new call back for the server's retry-after; each success adds 1/limit back, so the limit regains
one slot per round of successes, up to the ceiling. This is TCP's additive-increase,
multiplicative-decrease: a run at max_in_flight=64 against an account that allows less settles
near what the account allows instead of retrying in a storm."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Slot:
    queue_s: float  # how long the call waited for a slot (and for a retry-after pause)
    started: float  # when it got the slot (time.monotonic)


class InFlightLimit:
    def __init__(self, name: str, ceiling: int):
        self.name = name
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.lowest = ceiling  # the smallest the limit has been (reported, and read by tests)
        self.in_flight = 0
        self._paused_until = 0.0
        self._last_cut = float("-inf")
        self._changed = threading.Condition()

    @property
    def current(self) -> int:
        return max(1, int(self.limit))

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """Hold one of the provider's slots for the length of one HTTP call."""
        asked = time.monotonic()
        with self._changed:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    self._changed.wait(self._paused_until - now)
                elif self.in_flight >= self.current:
                    self._changed.wait()
                else:
                    break
            self.in_flight += 1
        slot = Slot(queue_s=now - asked, started=now)
        try:
            yield slot
        finally:
            with self._changed:
                self.in_flight -= 1
                self._changed.notify()

    def succeeded(self) -> None:
        with self._changed:
            if self.limit < self.ceiling:
                grown = min(float(self.ceiling), self.limit + 1 / self.limit)
                if int(grown) > int(self.limit):
                    self._changed.notify()
                self.limit = grown

    def rate_limited(self, slot: Slot, retry_after: float | None) -> None:
        """A call that held `slot` was refused for the rate: shrink (once for the calls of one round)
        and pause new calls for the server's retry-after."""
        with self._changed:
            now = time.monotonic()
            if slot.started > self._last_cut:  # the calls started before the last cut were counted by it
                self.limit = max(1.0, self.limit / 2)
                self._last_cut = now
                self.lowest = min(self.lowest, self.current)
                log.info(
                    "%s is rate-limiting: %d calls at once from now on (of %d)", self.name, self.current, self.ceiling
                )
            if retry_after:
                self._paused_until = max(self._paused_until, now + retry_after)
