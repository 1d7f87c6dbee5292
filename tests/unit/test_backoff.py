"""The one backoff schedule, the retry loop around it, and the one Retry-After parser."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest

from daemon.backoff import Backoff, Stopped, parse_retry_after, retry, wait_or_stop


def seeded(base: float, cap: float, min_share: float = 0.0) -> Backoff:
    return Backoff(base, cap, min_share=min_share, rng=random.Random(7))


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    """Attempt n's longest delay is base × 2^(n-1), never above the cap."""
    backoff = seeded(0.5, 10.0)
    assert [backoff.ceiling(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_attempts_below_one_and_huge_attempts_stay_within_bounds() -> None:
    """Attempt 0 counts as the first; attempt 10,000 is the cap, not an overflow."""
    backoff = seeded(0.5, 10.0)
    assert backoff.ceiling(0) == 0.5
    assert backoff.ceiling(10_000) == 10.0
    assert 0.0 <= backoff.delay(10_000) <= 10.0


def test_full_jitter_spreads_delays_between_zero_and_the_ceiling() -> None:
    """With min_share 0 every delay lies in [0, ceiling], and they differ from each other."""
    backoff = seeded(1.0, 8.0)
    delays = [backoff.delay(4) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 2.0
    assert max(delays) > 6.0


def test_min_share_is_the_part_of_each_delay_that_is_not_random() -> None:
    """With min_share 0.5 a delay is never shorter than half its ceiling."""
    backoff = seeded(1.0, 8.0, min_share=0.5)
    delays = [backoff.delay(4) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)


def test_the_same_seed_gives_the_same_schedule() -> None:
    """The rng is injectable, so a schedule can be replayed exactly."""
    assert [seeded(1, 60).delay(n) for n in range(1, 6)] == [
        seeded(1, 60).delay(n) for n in range(1, 6)
    ]


async def test_retry_tries_again_after_a_listed_exception_until_it_works() -> None:
    """Two OSErrors, then a value: the value is returned, each failure reported with its
    attempt number and a delay within that attempt's ceiling."""
    failures = [OSError("down"), OSError("still down")]
    reported: list[tuple[str, int, float]] = []

    async def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = await retry(
        operation,
        retry_on=(OSError,),
        backoff=seeded(0.001, 0.002),
        stop=asyncio.Event(),
        on_retry=lambda exc, attempt, delay: reported.append((str(exc), attempt, delay)),
    )
    assert result == "done"
    assert [(e, a) for e, a, _ in reported] == [("down", 1), ("still down", 2)]
    assert reported[0][2] <= 0.001
    assert reported[1][2] <= 0.002


async def test_retry_propagates_an_unlisted_exception_at_once() -> None:
    """A bug is not an outage: an exception outside `retry_on` escapes on the first attempt."""
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        await retry(
            operation,
            retry_on=(OSError,),
            backoff=seeded(0.001, 0.002),
            stop=asyncio.Event(),
            on_retry=lambda *_: None,
        )
    assert calls == 1


async def test_retry_raises_stopped_without_trying_when_stop_is_set() -> None:
    """A daemon that is stopping does not start the operation."""
    stop = asyncio.Event()
    stop.set()
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(Stopped):
        await retry(
            operation,
            retry_on=(OSError,),
            backoff=seeded(1, 1),
            stop=stop,
            on_retry=lambda *_: None,
        )
    assert calls == 0


async def test_retry_raises_stopped_when_stop_is_set_during_a_wait() -> None:
    """Stopping ends a long backoff wait at once instead of after it."""
    stop = asyncio.Event()

    async def operation() -> None:
        raise OSError("down")

    def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
        asyncio.get_running_loop().call_soon(stop.set)

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Stopped):
        await retry(
            operation,
            retry_on=(OSError,),
            backoff=seeded(60, 60, min_share=1.0),  # a 60 s wait, were it not for stop
            stop=stop,
            on_retry=on_retry,
        )
    assert loop.time() - started < 5


async def test_wait_or_stop_sleeps_the_whole_time_when_not_stopped() -> None:
    """Without stop it waits `seconds` and answers False."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_or_stop(asyncio.Event(), 0.02) is False
    assert loop.time() - started >= 0.015


async def test_wait_or_stop_answers_true_at_once_when_stopping() -> None:
    """With stop set (before or during the wait) it returns True without sleeping it out."""
    stop = asyncio.Event()
    stop.set()
    assert await wait_or_stop(stop, 60) is True
    later = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, later.set)
    assert await asyncio.wait_for(wait_or_stop(later, 60), 5) is True


async def test_wait_or_stop_treats_a_negative_wait_as_none() -> None:
    """A negative delay (a Retry-After in the past) does not raise."""
    assert await wait_or_stop(asyncio.Event(), -3) is False


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ('"3"', 3.0), ("1.5", 1.5), ("-2", -2.0), ("0", 0.0)],
)
def test_retry_after_in_delta_seconds(raw: str, seconds: float) -> None:
    """Delta seconds are read as they are (negatives too, for the caller to clamp)."""
    assert parse_retry_after(raw, wall_now=0.0) == seconds


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    """An HTTP date becomes the seconds between the given wall clock and that date."""
    now = 1_800_000_000.0
    raw = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(raw, wall_now=now) == pytest.approx(30.0)


@pytest.mark.parametrize("raw", [None, "", "soon", "nan", "inf", "-inf", "Tue, 99 Foo 2026"])
def test_unusable_retry_after_is_none(raw: str | None) -> None:
    """Missing, garbage and non-finite values give None: the caller picks its fallback."""
    assert parse_retry_after(raw, wall_now=1_800_000_000.0) is None
