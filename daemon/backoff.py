"""Waiting before trying again: the one backoff schedule and the one Retry-After parser.

Every retry in the daemon — reconnecting to Postgres or Kafka, re-writing a checkpoint batch,
re-sending a request after a 5xx, the limiter's global pause after systemic failures — waits
`Backoff.delay(attempt)`: capped exponential growth with jitter, so replicas and workers that
failed together do not retry together. `retry()` is the common loop around it (try, wait, try
again until it works or the daemon stops); loops with more to do between attempts (the recorder
puts its batch back first) call `delay()` and `wait_or_stop()` themselves.

A server's `Retry-After` beats the schedule: `parse_retry_after` reads it (delta seconds or an
HTTP date) and returns None when it is unusable, leaving the fallback to the caller that knows
the context (the rate limiter's, see ratelimit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
# 2**30 × any base is beyond every cap: bounding the exponent keeps the float finite.
MAX_EXPONENT = 30


class Stopped(Exception):
    """The daemon is stopping while an operation waited to be tried again."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter; attempt counts from 1.

    `min_share` is the part of each delay that is not random: 0 is "full jitter" (the spread
    that de-synchronises clients best), 0.5 "equal jitter" (never much shorter than planned).
    """

    base_seconds: float
    cap_seconds: float
    min_share: float = 0.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The longest delay of this attempt, before jitter."""
        exponent = min(max(attempt, 1) - 1, MAX_EXPONENT)
        return min(self.cap_seconds, self.base_seconds * 2.0**exponent)

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return float(self.rng.uniform(self.min_share * ceiling, ceiling))


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile; True when stopping."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    stop: asyncio.Event,
    on_retry: Callable[[BaseException, int, float], None],
) -> T:
    """`operation()` until it returns, waiting `backoff` after each failure in `retry_on`
    (reported through `on_retry(error, attempt, delay)`). Raises `Stopped` once `stop` is set;
    any other exception propagates at once (a bug is not an outage)."""
    attempt = 0
    while True:
        if stop.is_set():
            raise Stopped
        try:
            return await operation()
        except retry_on as exc:
            attempt += 1
            delay = backoff.delay(attempt)
            on_retry(exc, attempt, delay)
            if await wait_or_stop(stop, delay):
                raise Stopped from None


def parse_retry_after(raw: str | None, *, wall_now: float) -> float | None:
    """Seconds from a Retry-After value (delta seconds or an HTTP date); None if unusable.
    Negative values are returned as they are, for the caller to log and clamp."""
    if raw is None:
        return None
    try:
        value = float(raw.strip().strip('"'))
    except ValueError:
        value = math.nan
    if math.isfinite(value):
        return value
    try:
        return email.utils.parsedate_to_datetime(raw).timestamp() - wall_now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
