"""The per-key sliding window: at most `limit` counted requests in any `window` seconds.

A deque of the times of counted requests; a request at time t is still inside the window while
t > now - window. The headers follow from it: Remaining is what is left, Reset is when the oldest
counted request leaves, and Retry-After on a 429 is when enough of them have left for one more.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowState:
    """What the rate-limit headers say after a request."""

    limit: int
    remaining: int
    reset_epoch: int  # X-RateLimit-Reset: integer Unix seconds

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(self.reset_epoch),
        }


class SlidingWindow:
    """Counted request times of one key; the limit can change at run time."""

    __slots__ = ("hits", "limit", "window_seconds")

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.hits: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_seconds
        hits = self.hits
        while hits and hits[0] <= horizon:
            hits.popleft()

    def retry_after(self, now: float) -> int | None:
        """None when a request may go now, else whole seconds (≥ 1) until one may."""
        self._expire(now)
        excess = len(self.hits) - self.limit
        if excess < 0:
            return None
        if self.limit == 0:
            return max(1, math.ceil(self.window_seconds))
        # The request at index `excess` must leave before the count is below the limit.
        return max(1, math.ceil(self.hits[excess] + self.window_seconds - now))

    def count(self, now: float) -> None:
        self.hits.append(now)

    def uncount(self, at: float) -> None:
        """Give back a request counted at `at` (a 4xx when 4xx answers are free)."""
        with contextlib.suppress(ValueError):  # it may have left the window already
            self.hits.remove(at)

    def state(self, now: float) -> WindowState:
        self._expire(now)
        used = len(self.hits)
        reset = self.hits[0] + self.window_seconds if self.hits else now
        return WindowState(self.limit, max(0, self.limit - used), math.ceil(reset))

    def clear(self) -> None:
        self.hits.clear()
