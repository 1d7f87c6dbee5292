"""Postgres operations that must wait out an outage instead of crashing the daemon.

A database outage pauses the pipeline — intake stops admitting (so fetching stops), creates
stop before their intent is written — and everything resumes by itself when Postgres answers
again. Only a shutdown ends the wait, with `StoppedWaiting`, so the caller can leave its work
unfinished (and uncommitted, hence redelivered after the restart).

The waiting itself is backoff.py's `retry`; this room knows what an outage looks like.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

from daemon.backoff import Backoff, retry
from daemon.signals import or_stop

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0
# What "Postgres is unreachable or restarting" looks like through asyncpg.
OUTAGE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

T = TypeVar("T")
log = structlog.get_logger("pivotal_sync.postgres_outages")
_backoff = Backoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)


async def through_outages(
    operation: Callable[[], Awaitable[T]], stop: asyncio.Event, what: str
) -> T:
    """Run `operation`, retrying with capped, jittered backoff while Postgres is down.
    Raises `backoff.Stopped` when the daemon stops meanwhile."""

    def report(exc: BaseException, attempt: int, delay: float) -> None:
        log.warning(
            "postgres_operation_failed",
            operation=what,
            error=type(exc).__name__,
            attempt=attempt,
            retry_in_seconds=round(delay, 2),
        )

    # Each attempt also ends at `stop`: a query sent just before Postgres went silent waits
    # for its command timeout (30 s), and a shutdown must not wait with it. Abandoned, it
    # loses nothing: its work stays unfinished and uncommitted, hence redelivered.
    return await retry(
        lambda: or_stop(operation(), stop),
        retry_on=OUTAGE_ERRORS,
        backoff=_backoff,
        stop=stop,
        on_retry=report,
    )
