"""Waiting out an outage, one way for both planes: how long to wait between tries
(``Backoff``), when to stop trying (``Patience``), and the one loop that does it
(``patiently``), which tells a callback of every failed try so that each caller keeps its own
words (a CLI line, a log line, a state it records).

Nothing here sleeps or reads the clock at import: ``patiently`` takes both as arguments (tests
pass their own), and looks up ``time.sleep``/``time.monotonic`` only when called.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from contract import faults

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Seconds between tries: ``first``, times ``factor`` after each failed try, at most
    ``cap``; with ``jitter`` (a fraction), each delay is spread by up to that fraction either
    way, so that many clients do not come back at the same moment."""

    first: float
    factor: float = 2.0
    cap: float = float("inf")
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.first < 0 or not 0 <= self.jitter < 1:
            raise ValueError(f"a backoff needs first >= 0 and 0 <= jitter < 1, not {self}")
        if self.factor > 1 and self.cap == float("inf"):
            raise ValueError(
                f"a growing backoff needs a cap (time.sleep takes no infinity): {self}"
            )

    @classmethod
    def every(cls, seconds: float) -> Backoff:
        """The same delay every time."""
        return cls(seconds, factor=1.0)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay after failed try number ``attempt`` (0: the first failure)."""
        try:
            seconds = min(self.cap, self.first * self.factor ** max(0, attempt))
        except OverflowError:  # a long outage's count of tries: the cap, long since reached
            seconds = self.cap
        if self.jitter:
            seconds *= 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return faults.backoff_at_most(float(seconds))


@dataclass(frozen=True)
class Patience:
    """When to give up: after ``tries`` failed tries, once more than ``seconds`` have passed
    since the first try, or when ``stop()`` says so (a signal, a shutdown); never, when none
    is given."""

    seconds: float | None = None
    tries: int | None = None
    stop: Callable[[], bool] | None = None

    def exhausted(self, failed: int, elapsed: float) -> bool:
        """Whether to give up after ``failed`` failed tries, ``elapsed`` seconds in."""
        return (
            (self.tries is not None and failed >= self.tries)
            or (self.seconds is not None and elapsed > self.seconds)
            or (self.stop is not None and self.stop())
        )


FOREVER = Patience()


def patiently(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    patience: Patience = FOREVER,
    on_failure: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], object] | None = None,
    clock: Callable[[], float] | None = None,
) -> T:
    """``fn()``, tried again while it raises one of ``retry_on``, waiting ``backoff`` between
    tries. ``on_failure(exc, delay)`` is told of every failed try, the last one included, with
    the delay before the next; when ``patience`` runs out the last error is raised. Any other
    exception (Ctrl-C included) goes up at once."""
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    started = clock()
    failed = 0
    while True:
        try:
            return fn()
        except retry_on as exc:
            delay = backoff.delay(failed)
            failed += 1
            if on_failure is not None:
                on_failure(exc, delay)
            if patience.exhausted(failed, clock() - started):
                raise
            sleep(delay)
