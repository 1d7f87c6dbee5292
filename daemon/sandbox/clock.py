"""Wall time for the sandbox, injectable so tests can move it.

One clock drives everything time-shaped: record timestamps, the sliding windows, the
`X-RateLimit-Reset` header and the 24 h idempotency expiry. `OffsetClock` wraps any clock with an
offset the admin API can advance, so even a sandbox running in a subprocess can jump a day.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of Unix time in seconds (float)."""

    def now(self) -> float: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


class OffsetClock:
    """Another clock plus an offset that only ever grows (time never runs backwards)."""

    def __init__(self, base: Clock) -> None:
        self.base = base
        self.offset_seconds = 0.0

    def now(self) -> float:
        return self.base.now() + self.offset_seconds

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock cannot go backwards")
        self.offset_seconds += seconds
