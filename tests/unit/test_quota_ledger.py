"""The shared pacer (daemon/quota_ledger.py) on a fake clock, against a scripted ledger.

The database side (`quota_reserve`) is tested against a real Postgres in
tests/integration/test_quota_ledger.py; here, what the replica sends it and how it behaves
with the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from pydantic import SecretStr

from daemon.metrics import Metrics
from daemon.quota_ledger import (
    AUTH,
    AUTH_PAUSE_SECONDS,
    ReserveAnswer,
    ReserveCall,
    SharedPacer,
    key_hash,
)
from daemon.ratelimit import RateLimiter

HEADERS = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "90"}


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass
class ScriptedLedger:
    """Grants up to `free` slots per call; raises while `down`; records every call and the
    time it was made; knows the limit once a call published it."""

    clock: FakeTime
    free: int = 1000
    limit: int | None = None
    times: list[float] = field(default_factory=list)
    down: bool = False
    calls: list[ReserveCall] = field(default_factory=list)
    next_id: int = 1
    grants_total: int = 0
    held: int = 0

    async def close(self) -> None:
        pass

    async def reserve(self, call: ReserveCall) -> ReserveAnswer:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionRefusedError("down")
        self.calls.append(call)
        self.times.append(self.clock.now)
        self.limit = call.limit or self.limit
        take = min(call.want, self.free)
        granted = tuple(range(self.next_id, self.next_id + take))
        self.next_id += take
        self.grants_total += take
        self.held += take
        return ReserveAnswer(
            granted=granted,
            wait_seconds=1.0,
            limit=self.limit,
            window_seconds=10.0,
            blocked_seconds=0.0,
            auth_paused=False,
            held=self.held,
            grants_total=self.grants_total,
            replicas=1,
        )


@dataclass
class Rig:
    pacer: SharedPacer
    ledger: ScriptedLedger
    local: RateLimiter
    clock: FakeTime
    metrics: Metrics

    async def until(self, condition: Callable[[], bool]) -> None:
        for _ in range(10_000):
            if condition():
                return
            await asyncio.sleep(0)
        raise AssertionError("condition never became true")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeTime()
    metrics = Metrics()
    local = RateLimiter(
        initial_rate_per_minute=600,
        max_in_flight=16,
        clock=clock.monotonic,
        sleep=clock.sleep,
        window_seconds=10.0,
    )
    ledger = ScriptedLedger(clock)
    pacer = SharedPacer(
        local=local,
        ledger=ledger,
        metrics=metrics,
        window_hint_seconds=10.0,
        clock=clock.monotonic,
        sleep=clock.sleep,
    )
    stop = asyncio.Event()
    caller = asyncio.create_task(pacer.run(stop))
    yield Rig(pacer, ledger, local, clock, metrics)
    stop.set()
    await caller


async def test_workers_waiting_together_are_served_by_one_round_trip(rig: Rig) -> None:
    """Five workers queued at once cost one call that wants five slots."""
    permits = await asyncio.gather(*(rig.pacer.acquire() for _ in range(5)))
    assert sorted(p.slot for p in permits if p.slot is not None) == [1, 2, 3, 4, 5]
    wanting = [c.want for c in rig.ledger.calls if c.want]
    assert wanting == [5]


async def test_finished_requests_are_reported_with_their_age_not_a_time(rig: Rig) -> None:
    """A request is reported as arrived as long before the call as its answer came (a
    duration: the database subtracts it from its own clock)."""
    permit = await rig.pacer.acquire()
    permit.complete(200, HEADERS)
    answered = rig.clock.now
    rig.clock.now += 0.3
    await rig.pacer.acquire()
    index = next(i for i, c in enumerate(rig.ledger.calls) if c.done)
    age = rig.ledger.times[index] - answered
    assert age >= 0.3
    [(slot, reported_age, counted)] = rig.ledger.calls[index].done
    assert (slot, counted) == (permit.slot, True)
    assert reported_age == pytest.approx(age)


async def test_a_429_is_shared_as_a_block_and_holds_no_slot(rig: Rig) -> None:
    """The Retry-After of a 429 goes to the others; the rejected request is reported as not
    counted, so the ledger frees its slot."""
    permit = await rig.pacer.acquire()
    permit.complete(429, {**HEADERS, "Retry-After": "7"})
    answered = rig.clock.now
    await rig.until(lambda: any(c.blocked_seconds for c in rig.ledger.calls))
    index = next(i for i, c in enumerate(rig.ledger.calls) if c.blocked_seconds)
    since = rig.ledger.times[index] - answered
    report = rig.ledger.calls[index]
    assert report.blocked_seconds == pytest.approx(7.0 - since)
    [(slot, age, counted)] = report.done
    assert (slot, counted) == (permit.slot, False)
    assert age == pytest.approx(since)


async def test_a_refused_key_pauses_every_replica_until_it_resumes(rig: Rig) -> None:
    """pause("auth") is published with a lease; resume clears it."""
    rig.pacer.pause(AUTH)
    await rig.until(lambda: any(c.auth_pause_seconds for c in rig.ledger.calls))
    assert rig.ledger.calls[-1].auth_pause_seconds == AUTH_PAUSE_SECONDS
    rig.pacer.resume(AUTH)
    await rig.until(lambda: rig.ledger.calls[-1].auth_pause_seconds == 0.0)


async def test_the_learned_limit_is_published_once(rig: Rig) -> None:
    """The limit learned from a response goes out with the next call, and only then."""
    (await rig.pacer.acquire()).complete(200, HEADERS)
    await rig.pacer.acquire()
    await rig.pacer.acquire()
    assert [c.limit for c in rig.ledger.calls if c.limit is not None] == [100]


async def test_a_worker_cancelled_while_waiting_gives_its_slot_back(rig: Rig) -> None:
    """A slot granted to a worker that went away is reported unsent (not counted)."""
    rig.ledger.free = 0
    waiting = asyncio.create_task(rig.pacer.acquire())
    await rig.until(lambda: any(c.want for c in rig.ledger.calls))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    rig.ledger.free = 1000
    permit = await rig.pacer.acquire()
    assert permit.slot is not None
    released = [d for c in rig.ledger.calls for d in c.done]
    assert all(not counted for _, _, counted in released)


async def test_postgres_out_means_the_local_limiter_and_back_when_it_returns(rig: Rig) -> None:
    """A failing call switches acquire() to the header-based limiter at once; the requests
    sent meanwhile are written into the ledger when it answers again."""
    rig.ledger.down = True
    permit = await rig.pacer.acquire()
    assert permit.slot is None
    assert rig.pacer.in_fallback
    assert rig.metrics.registry.get_sample_value("pivotal_sync_quota_ledger_fallbacks_total") == 1
    permit.complete(200, HEADERS)
    rig.ledger.down = False
    await rig.until(lambda: not rig.pacer.in_fallback)
    [age] = rig.ledger.calls[-1].extra_ages
    assert age == pytest.approx(rig.clock.now - permit.sent_at)
    assert rig.metrics.registry.get_sample_value("pivotal_sync_quota_ledger_in_use") == 1
    assert (await rig.pacer.acquire()).slot is not None


async def test_a_count_the_ledger_cannot_explain_is_reported_as_outside(rig: Rig) -> None:
    """Granted with 5 slots held and 1 granted since, the server counted 20: 14 came from
    outside the ledger."""
    rig.ledger.held = 4
    permit = await rig.pacer.acquire()
    permit.complete(200, {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "80"})
    await rig.pacer.acquire()
    await rig.until(lambda: any(c.outside for c in rig.ledger.calls))
    assert next(c.outside for c in rig.ledger.calls if c.outside) == 14


def test_the_key_is_identified_by_a_hash_never_the_key() -> None:
    """Two keys, two identities; the identity does not contain the key."""
    secret = "pivotal_live_abcdef123456"
    identity = key_hash(SecretStr(secret))
    assert len(identity) == 32
    assert secret.encode() not in identity
    assert identity != key_hash(SecretStr(secret + "x"))
