"""The rate limiter, on a fake clock: headers, the quota ledger, stops, AIMD, concurrency."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from daemon.backoff import parse_retry_after
from daemon.metrics import Metrics
from daemon.ratelimit import (
    DEFAULT_RETRY_AFTER_SECONDS,
    QuotaHeaders,
    RateLimiter,
    parse_quota_headers,
)

EPOCH = 1_750_000_000.0


class FakeTime:
    """A monotonic clock, a wall clock EPOCH ahead of it, and a sleep that moves both."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def limiter(
    clock: FakeTime,
    *,
    window: float | None = 10.0,
    max_in_flight: int = 16,
    metrics: Metrics | None = None,
    max_retry_after: float = 300.0,
) -> RateLimiter:
    return RateLimiter(
        initial_rate_per_minute=60,
        max_in_flight=max_in_flight,
        metrics=metrics,
        clock=clock.monotonic,
        wall_clock=clock.wall,
        sleep=clock.sleep,
        rng=random.Random(0),
        max_retry_after_seconds=max_retry_after,
        window_seconds=window,
    )


def pivotal(clock: FakeTime, limit: int, remaining: int, reset_in: float = 10) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.ceil(clock.wall() + reset_in)),
    }


async def send(
    rl: RateLimiter, status: int = 201, headers: Mapping[str, str] | None = None
) -> None:
    permit = await rl.acquire()
    permit.complete(status, headers or {})


async def answered_after(
    rl: RateLimiter, clock: FakeTime, seconds: float, limit: int, remaining: int
) -> None:
    """One request whose answer takes `seconds` to come back."""
    permit = await rl.acquire()
    clock.now += seconds
    permit.complete(201, pivotal(clock, limit, remaining))


async def pending(task: asyncio.Task[object]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


# -- header parsing ------------------------------------------------------------------------------


def test_pivotal_headers_are_read_case_insensitively_with_reset_as_a_delta() -> None:
    quota = parse_quota_headers(
        {
            "x-ratelimit-limit": "60",
            "X-RATELIMIT-REMAINING": "12",
            "X-RateLimit-Reset": "1750000030",
        },
        wall_now=EPOCH,
    )
    assert quota == QuotaHeaders(limit=60, remaining=12, reset_seconds=30.0)


def test_missing_headers_say_nothing() -> None:
    quota = parse_quota_headers({"content-type": "application/json"}, wall_now=EPOCH)
    assert quota == QuotaHeaders()
    assert not quota.any


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit": "-5", "x-ratelimit-remaining": "3"}, QuotaHeaders(remaining=3)),
        ({"x-ratelimit-limit": "NaN", "x-ratelimit-remaining": "inf"}, QuotaHeaders()),
        ({"x-ratelimit-limit": "lots", "x-ratelimit-remaining": ""}, QuotaHeaders()),
        ({"x-ratelimit-limit": "1e12", "x-ratelimit-remaining": "1"}, QuotaHeaders(remaining=1)),
        (
            {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "900"},
            QuotaHeaders(limit=60, remaining=60),
        ),
        ({"x-ratelimit-limit": "60", "x-ratelimit-remaining": "-1"}, QuotaHeaders(limit=60)),
        ({"x-ratelimit-limit": "0", "x-ratelimit-remaining": "0"}, QuotaHeaders(remaining=0)),
    ],
)
def test_hostile_counts_are_dropped_or_clamped(
    headers: dict[str, str], expected: QuotaHeaders
) -> None:
    assert parse_quota_headers(headers, wall_now=EPOCH) == expected


def test_a_reset_in_the_past_means_now_and_one_far_in_the_future_is_ignored() -> None:
    past = parse_quota_headers({"x-ratelimit-reset": str(EPOCH - 50)}, wall_now=EPOCH)
    future = parse_quota_headers({"x-ratelimit-reset": str(EPOCH + 10**7)}, wall_now=EPOCH)
    assert past.reset_seconds == 0.0
    assert future.reset_seconds is None


def test_a_skewed_local_clock_is_corrected_by_the_date_header() -> None:
    headers = {"x-ratelimit-reset": "1750000030", "date": "Sun, 15 Jun 2025 15:06:40 GMT"}
    # Date is EPOCH + 0 (2025-06-15T15:06:40Z); our wall clock is an hour behind.
    quota = parse_quota_headers(headers, wall_now=EPOCH - 3600)
    assert quota.reset_seconds == 30.0


def test_ietf_fields_of_the_older_draft_are_understood() -> None:
    quota = parse_quota_headers(
        {"RateLimit-Policy": "100;w=60", "RateLimit": "limit=100, remaining=50, reset=30"},
        wall_now=EPOCH,
    )
    assert quota == QuotaHeaders(limit=100, remaining=50, reset_seconds=30.0, window_seconds=60.0)


def test_ietf_structured_fields_of_the_newer_draft_are_understood() -> None:
    quota = parse_quota_headers(
        {"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"default";r=50;t=30'},
        wall_now=EPOCH,
    )
    assert quota == QuotaHeaders(limit=100, remaining=50, reset_seconds=30.0, window_seconds=60.0)


def test_separate_ietf_fields_of_the_first_drafts_are_understood() -> None:
    quota = parse_quota_headers(
        {"RateLimit-Limit": "10", "RateLimit-Remaining": "4", "RateLimit-Reset": "7"},
        wall_now=EPOCH,
    )
    assert quota == QuotaHeaders(limit=10, remaining=4, reset_seconds=7.0)


def test_retry_after_is_delta_seconds_or_an_http_date() -> None:
    assert parse_retry_after("7", wall_now=EPOCH) == 7.0
    assert parse_retry_after("Sun, 15 Jun 2025 15:06:50 GMT", wall_now=EPOCH) == 10.0
    assert parse_retry_after("soon", wall_now=EPOCH) is None
    assert parse_retry_after(None, wall_now=EPOCH) is None


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "retry-after",
                "date",
                "ratelimit",
                "ratelimit-policy",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ]
        ),
        st.text(max_size=30),
    )
)
def test_no_header_value_crashes_the_limiter_or_makes_its_state_nonsensical(
    headers: dict[str, str],
) -> None:
    clock = FakeTime()

    async def run() -> None:
        rl = limiter(clock)
        for status in (201, 429, 503):
            (await rl.acquire()).complete(status, headers)
        snap = rl.snapshot()
        assert math.isfinite(snap.tokens)
        assert math.isfinite(snap.rate_per_second)
        assert snap.rate_per_second >= 0
        assert 0 < snap.window_seconds <= 3600
        assert snap.blocked_until is None or snap.blocked_until <= clock.now + 300

    asyncio.run(run())


# -- the quota ledger ----------------------------------------------------------------------------


async def test_an_empty_window_is_spent_at_once(clock: FakeTime) -> None:
    rl = limiter(clock)
    start = clock.now
    for sent in range(1, 101):
        await send(rl, headers=pivotal(clock, 100, 100 - sent))
    assert clock.now == start
    assert rl.snapshot().tokens == 0


async def test_with_remaining_zero_the_next_request_waits_for_our_oldest_slot(
    clock: FakeTime,
) -> None:
    rl = limiter(clock)
    first = clock.now
    for sent in range(1, 11):
        await send(rl, headers=pivotal(clock, 10, 10 - sent))
        clock.now += 0.1
    await rl.acquire()
    assert first + 10 <= clock.now < first + 10.1


async def test_a_slow_answer_holds_its_slot_until_its_latest_possible_arrival(
    clock: FakeTime,
) -> None:
    # The first request waited 0.3 s (a new connection); the others came back in 0.01 s. The
    # server may have counted the first as late as 0.29 s after it left, so its slot frees
    # then, not 10 s after the send.
    rl = limiter(clock, max_in_flight=1)
    first_sent = clock.now
    await answered_after(rl, clock, 0.3, limit=2, remaining=1)
    await answered_after(rl, clock, 0.01, limit=2, remaining=0)
    await rl.acquire()
    assert clock.now >= first_sent + 10 + 0.29


async def test_our_own_late_arrivals_are_not_mistaken_for_another_replica(
    clock: FakeTime,
) -> None:
    # A send that was slow to arrive is still counted by the server a window after it left;
    # the ledger knows it may be, so the count holds no foreign requests and no margin is kept.
    rl = limiter(clock, max_in_flight=1)
    await answered_after(rl, clock, 0.01, limit=10, remaining=9)
    await answered_after(rl, clock, 0.5, limit=10, remaining=8)
    clock.now = 100 + 10.2  # the first has left the window; the slow one may still be in it
    await send(rl, headers=pivotal(clock, 10, 8))
    snap = rl.snapshot()
    assert snap.rate_per_second == 1.0  # the whole limit: 10 per 10 s, no sharing margin
    assert snap.tokens == 8


async def test_a_count_seen_with_a_429_does_not_outlive_the_window(clock: FakeTime) -> None:
    # Another replica held the whole window when our 429 came. Once its Retry-After has
    # passed, those requests have left: the next answer's count is the one to believe.
    rl = limiter(clock)
    await send(rl, headers=pivotal(clock, 100, 99))
    await send(rl, 429, {**pivotal(clock, 100, 0), "Retry-After": "10"})
    permit = await rl.acquire()
    clock.now += 0.5
    permit.complete(201, pivotal(clock, 100, 99))
    assert rl.snapshot().tokens > 90


async def test_a_rejected_request_holds_no_slot(clock: FakeTime) -> None:
    # A 429 is not counted by the server (docs/pivotal-api.md, item 15): the ledger must not hold a
    # slot for it either, or the slot would "free" a window later and be re-used twice.
    rl = limiter(clock)
    for sent in range(1, 6):
        await send(rl, headers=pivotal(clock, 10, 10 - sent))
    await send(rl, 429, {**pivotal(clock, 10, 5), "Retry-After": "1"})  # an injected storm
    permit = await rl.acquire()
    permit.complete(201, pivotal(clock, 10, 4))  # the server counts our six accepted sends
    assert rl.snapshot().tokens == 4


async def test_a_window_full_of_foreign_requests_waits_until_reset(clock: FakeTime) -> None:
    rl = limiter(clock)
    await send(rl, headers=pivotal(clock, 100, 0, reset_in=4))
    start = clock.now
    await rl.acquire()
    assert start + 4 <= clock.now < start + 4.2


async def test_a_reset_in_the_past_does_not_spin(clock: FakeTime) -> None:
    rl = limiter(clock)
    await send(rl, headers={**pivotal(clock, 100, 0), "X-RateLimit-Reset": str(EPOCH - 100)})
    permit = await rl.acquire()  # a probe: the window may have room by now
    start = clock.now
    permit.complete(201, {**pivotal(clock, 100, 0), "X-RateLimit-Reset": str(EPOCH - 100)})
    await rl.acquire()
    assert clock.now > start  # the next probe is spaced, not immediate


async def test_a_raised_limit_is_spent_from_the_next_response(clock: FakeTime) -> None:
    rl = limiter(clock)
    await send(rl, headers=pivotal(clock, 60, 0))
    await send(rl, headers=pivotal(clock, 600, 539))
    snap = rl.snapshot()
    assert snap.learned_limit == 600
    assert snap.tokens >= 500


async def test_a_lowered_limit_stops_sending_until_our_slots_fall_under_it(
    clock: FakeTime,
) -> None:
    rl = limiter(clock)
    start = clock.now
    for sent in range(1, 101):
        await send(rl, headers=pivotal(clock, 600, 600 - sent))
        clock.now += 0.01
    await send(rl, headers=pivotal(clock, 60, 0))
    assert rl.snapshot().learned_limit == 60
    await rl.acquire()
    # 101 sends 0.01 s apart: the 42nd oldest must leave before fewer than 60 remain.
    assert clock.now >= start + 10 + 0.41


async def test_the_window_is_learned_from_reset_when_not_hinted(clock: FakeTime) -> None:
    rl = limiter(clock, window=None)
    assert rl.snapshot().window_seconds == 60
    clock.now = 100.25
    for sent in range(1, 4):
        await send(rl, headers=pivotal(clock, 100, 100 - sent, reset_in=10))
    assert rl.snapshot().window_seconds == 10


async def test_a_late_first_answer_does_not_set_the_window_alone(clock: FakeTime) -> None:
    """The first answer's Reset says 14 s (it came late); the next two say 10 s: the window is
    learned as 10 s, not stuck above it."""
    rl = limiter(clock, window=None)
    clock.now = 100.25
    for sent, reset_in in ((1, 14), (2, 10), (3, 10)):
        await send(rl, headers=pivotal(clock, 100, 100 - sent, reset_in=reset_in))
    assert rl.snapshot().window_seconds == 10


async def test_a_policy_window_overrides_the_default(clock: FakeTime) -> None:
    rl = limiter(clock, window=None)
    await send(rl, headers={"RateLimit-Policy": "100;w=30", "RateLimit": "limit=100, remaining=99"})
    assert rl.snapshot().window_seconds == 30


async def test_answers_arriving_out_of_order_do_not_roll_the_count_back(clock: FakeTime) -> None:
    rl = limiter(clock)
    await send(rl, headers=pivotal(clock, 100, 99))
    older = await rl.acquire()
    newer = await rl.acquire()
    newer.complete(201, pivotal(clock, 100, 10))  # someone else took 87 meanwhile
    older.complete(201, pivotal(clock, 100, 98))
    assert rl.snapshot().tokens < 15


# -- Retry-After ---------------------------------------------------------------------------------


async def test_retry_after_blocks_every_acquire_even_with_remaining_left(clock: FakeTime) -> None:
    metrics = Metrics()
    rl = limiter(clock, metrics=metrics)
    await send(rl, headers=pivotal(clock, 100, 99))
    start = clock.now
    await send(rl, 429, {**pivotal(clock, 100, 50), "Retry-After": "7"})
    assert rl.snapshot().blocked_until == start + 7
    await rl.acquire()
    assert clock.now >= start + 7
    assert metrics.registry.get_sample_value("pivotal_sync_api_rate_limited_total") == 1
    assert metrics.registry.get_sample_value("pivotal_sync_api_retry_after_seconds_total") == 7


async def test_an_absurd_retry_after_is_clamped_and_logged(clock: FakeTime) -> None:
    rl = limiter(clock, max_retry_after=60)
    start = clock.now
    with capture_logs() as logs:
        await send(rl, 429, {"Retry-After": "86400"})
    assert rl.snapshot().blocked_until == start + 60
    assert any(e["event"] == "retry_after_clamped" for e in logs)


@pytest.mark.parametrize(
    ("value", "reset_in", "expected"),
    [("-5", None, 0.0), ("later", None, DEFAULT_RETRY_AFTER_SECONDS), ("later", 3, 3.0)],
)
async def test_an_unusable_retry_after_falls_back_to_reset_or_a_default(
    clock: FakeTime, value: str, reset_in: float | None, expected: float
) -> None:
    rl = limiter(clock)
    headers = {"Retry-After": value}
    if reset_in is not None:
        headers["X-RateLimit-Reset"] = str(math.ceil(clock.wall() + reset_in))
    start = clock.now
    with capture_logs() as logs:
        await send(rl, 429, headers)
    blocked = rl.snapshot().blocked_until
    assert (blocked or start) - start == pytest.approx(expected, abs=1)
    assert {e["event"] for e in logs} & {"retry_after_clamped", "retry_after_invalid"}


# -- no headers: AIMD ----------------------------------------------------------------------------


async def test_without_headers_the_rate_grows_slowly_and_halves_on_a_429(clock: FakeTime) -> None:
    rl = limiter(clock)
    assert rl.snapshot().rate_per_second == pytest.approx(1.0)
    for _ in range(10):
        await send(rl)
    grown = rl.snapshot().rate_per_second
    assert 1.0 < grown < 1.5
    await send(rl, 429, {"Retry-After": "1"})
    assert rl.snapshot().rate_per_second == pytest.approx(grown / 2)


async def test_without_headers_requests_are_paced_at_the_start_rate(clock: FakeTime) -> None:
    rl = limiter(clock)
    start = clock.now
    for _ in range(5):
        await send(rl, 500 - 299)
    assert clock.now - start >= 3.5  # ~1 per second after the first


# -- pause, backoff, cancellation ----------------------------------------------------------------


async def test_a_probe_goes_out_while_paused_and_counts_as_our_own(clock: FakeTime) -> None:
    rl = limiter(clock)
    await send(rl, headers=pivotal(clock, 10, 9))
    rl.pause("auth")
    probe = rl.probe()  # no waiting: the pause is what the probe is for
    probe.complete(200, pivotal(clock, 10, 8))
    rl.resume("auth")
    # The server counted two requests, both ours: nobody else shares the key.
    snap = rl.snapshot()
    assert snap.rate_per_second == 1.0
    assert snap.tokens == 8


async def test_pause_blocks_acquire_until_resume(clock: FakeTime) -> None:
    metrics = Metrics()
    rl = limiter(clock, metrics=metrics)
    rl.pause("auth")
    assert rl.paused_reasons == {"auth"}
    assert metrics.registry.get_sample_value("pivotal_sync_paused", {"reason": "auth"}) == 1
    waiter = asyncio.create_task(rl.acquire())
    assert await pending(waiter)
    rl.resume("auth")
    (await waiter).complete(201, {})
    assert metrics.registry.get_sample_value("pivotal_sync_paused", {"reason": "auth"}) == 0


async def test_consecutive_failures_back_the_whole_client_off(clock: FakeTime) -> None:
    rl = limiter(clock)
    for _ in range(3):
        (await rl.acquire()).failed()
    assert "server_errors" in rl.paused_reasons
    blocked = rl.snapshot().blocked_until
    assert blocked is not None
    await send(rl, 201, pivotal(clock, 100, 90))
    assert clock.now >= blocked
    assert rl.paused_reasons == frozenset()


async def test_sustained_5xx_back_off_longer_each_time(clock: FakeTime) -> None:
    rl = limiter(clock)
    waits = []
    for _ in range(6):
        start = clock.now
        await send(rl, 503, pivotal(clock, 100, 90))
        waits.append(rl.snapshot().blocked_until or start)
        waits[-1] -= start
    assert waits[0] == waits[1] == 0
    assert waits[5] > waits[3] > 0


async def test_a_cancelled_acquire_takes_no_slot_and_no_token(clock: FakeTime) -> None:
    rl = limiter(clock)
    rl.pause("auth")
    waiter = asyncio.create_task(rl.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    rl.resume("auth")
    assert rl.snapshot().in_flight == 0
    await send(rl, headers=pivotal(clock, 100, 99))
    assert rl.snapshot().in_flight == 0


async def test_a_permit_is_completed_exactly_once(clock: FakeTime) -> None:
    rl = limiter(clock)
    permit = await rl.acquire()
    permit.complete(201, {})
    with pytest.raises(RuntimeError):
        permit.failed()


async def test_leaving_the_request_block_without_an_answer_counts_as_failed(
    clock: FakeTime,
) -> None:
    rl = limiter(clock)
    with pytest.raises(TimeoutError):
        async with rl.request():
            raise TimeoutError
    assert rl.snapshot().in_flight == 0
    async with rl.request() as permit:
        permit.complete(201, {})
    assert rl.snapshot().in_flight == 0


# -- concurrency ---------------------------------------------------------------------------------


async def test_one_request_goes_first_to_learn_whether_there_are_headers(clock: FakeTime) -> None:
    rl = limiter(clock)
    await rl.acquire()
    second = asyncio.create_task(rl.acquire())
    assert await pending(second)
    second.cancel()
    assert rl.snapshot().concurrency_limit == 1


async def concurrency_after(clock: FakeTime, latency: float) -> int:
    rl = limiter(clock, max_in_flight=64)
    for sent in range(1, 21):
        permit = await rl.acquire()
        clock.now += latency
        permit.complete(201, pivotal(clock, 300, 300 - sent))
    return rl.snapshot().concurrency_limit


async def test_concurrency_follows_latency(clock: FakeTime) -> None:
    fast = await concurrency_after(clock, 0.002)
    slow = await concurrency_after(clock, 0.3)
    assert fast <= 16  # a few ms each: a handful in flight spends even the initial burst
    assert slow == 64


# -- observability -------------------------------------------------------------------------------


async def test_gauges_follow_the_headers(clock: FakeTime) -> None:
    metrics = Metrics()
    rl = limiter(clock, metrics=metrics)
    await send(rl, headers=pivotal(clock, 100, 99))

    def gauge(name: str) -> float | None:
        return metrics.registry.get_sample_value(f"pivotal_sync_{name}")

    assert gauge("ratelimit_limit") == 100
    assert gauge("ratelimit_remaining") == 99
    assert gauge("ratelimit_window_seconds") == 10
    assert gauge("ratelimit_rate_per_second") == pytest.approx(10.0, rel=0.05)
    assert gauge("api_requests_in_flight") == 0


async def test_a_learned_limit_is_logged_once(clock: FakeTime) -> None:
    rl = limiter(clock)
    with capture_logs() as logs:
        for sent in range(1, 6):
            await send(rl, headers=pivotal(clock, 100, 100 - sent))
    assert [e["event"] for e in logs].count("rate_limit_learned") == 1


async def test_seconds_to_send_uses_the_learned_rate(clock: FakeTime) -> None:
    rl = limiter(clock)
    for sent in range(1, 101):
        await send(rl, headers=pivotal(clock, 100, 100 - sent))
    assert rl.seconds_to_send(0) == 0
    assert rl.seconds_to_send(50) == pytest.approx(5.0, rel=0.05)
