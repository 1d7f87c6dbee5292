"""Postgres operations that must wait out an outage instead of crashing the daemon.

A database outage pauses the pipeline — intake stops admitting (so fetching stops), creates
stop before their intent is written — and everything resumes by itself when Postgres answers
again. Only a shutdown ends the wait, with `StoppedWaiting`, so the caller can leave its work
unfinished (and uncommitted, hence redelivered after the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

from daemon.recorder import backoff_seconds

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0
# What "Postgres is unreachable or restarting" looks like through asyncpg.
OUTAGE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

T = TypeVar("T")
log = structlog.get_logger("pivotal_sync.retrying")
_rng = random.Random()


class StoppedWaiting(Exception):
    """The daemon is stopping while an operation waited for Postgres."""


async def through_outages(
    operation: Callable[[], Awaitable[T]], stop: asyncio.Event, what: str
) -> T:
    """Run `operation`, retrying with capped, jittered backoff while Postgres is down."""
    attempt = 0
    while True:
        try:
            return await operation()
        except OUTAGE_ERRORS as exc:
            attempt += 1
            delay = backoff_seconds(attempt, _rng, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)
            log.warning(
                "postgres_operation_failed",
                operation=what,
                error=type(exc).__name__,
                retry_in_seconds=round(delay, 2),
            )
            if stop.is_set():
                raise StoppedWaiting from None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
