"""Waiting out a Postgres outage: retried while it lasts, and never longer than the daemon runs."""

from __future__ import annotations

import asyncio

import pytest

from daemon.backoff import Stopped
from daemon.postgres_outages import through_outages


async def test_a_query_hanging_on_a_silent_postgres_ends_when_the_daemon_stops() -> None:
    # A blackholed server answers nothing: the query would wait for its command timeout.
    stop = asyncio.Event()

    async def silent() -> None:
        await asyncio.sleep(3600)

    waiting = asyncio.create_task(through_outages(silent, stop, "look_up"))
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(waiting, 1.0)


async def test_an_outage_is_retried_until_postgres_answers() -> None:
    answers = iter([ConnectionRefusedError("down"), ConnectionRefusedError("down"), None])

    async def flaky() -> str:
        failure = next(answers)
        if failure is not None:
            raise failure
        return "rows"

    assert await through_outages(flaky, asyncio.Event(), "look_up") == "rows"
