"""The shared quota ledger (daemon/quota_ledger.py, migration 0003) against a real Postgres.

Replicas are separate processes where it matters (tests/integration/quota_ledger_worker.py);
Postgres is taken away through a fault proxy in front of it (devtools/fault_proxy.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import asyncpg
import pytest

from daemon.checkpoints import CheckpointStore
from daemon.metrics import Metrics
from daemon.quota_ledger import PostgresLedger, ReserveCall, SharedPacer
from daemon.ratelimit import RateLimiter
from devtools.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.postgres

WORKER = (sys.executable, "-m", "tests.integration.quota_ledger_worker")
HEADERS = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99"}


@pytest.fixture
async def dsn(database_url: str) -> str:
    async with await CheckpointStore.connect(database_url) as store:
        await store.migrate()
    return database_url


def new_key() -> bytes:
    return uuid.uuid4().bytes * 2


def call(want: int, **news: object) -> ReserveCall:
    return ReserveCall(want=want, in_flight=(), **news)  # type: ignore[arg-type]


async def slot_rows(dsn: str, key: bytes) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT reserved_at, arrived_at, clock_timestamp() AS now"
            " FROM quota_slots WHERE key_hash = $1",
            key,
        )
    finally:
        await conn.close()


async def test_slots_are_counted_exactly_across_processes_with_skewed_clocks(dsn: str) -> None:
    """Four processes, clocks off by up to a month, 8 workers each, race for a limit of 40:
    exactly 40 slots are granted, and every slot's times are the database's own."""
    key = new_key()
    offsets = ("0", "3600", "-3600", "2592000")
    processes = [
        subprocess.Popen(
            [*WORKER, "take", dsn, key.hex(), "40", "3", offset],
            stdout=subprocess.PIPE,
            text=True,
        )
        for offset in offsets
    ]
    granted = []
    for process in processes:
        out, _ = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0
        granted.append(int(out.strip().splitlines()[-1]))  # after the log lines
    assert sum(granted) == 40
    rows = await slot_rows(dsn, key)
    assert len(rows) == 40
    for row in rows:
        assert row["reserved_at"] <= row["arrived_at"] <= row["now"]


async def test_a_killed_replica_frees_its_slots_one_lease_and_one_window_later(dsn: str) -> None:
    """A replica SIGKILLed holding the whole window (in flight, never reported): another waits
    for its lease to run out and the window to pass, no less and not much more."""
    key = new_key()
    holder = subprocess.Popen(
        [*WORKER, "hold", dsn, key.hex(), "3", "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line.strip() == "held 3"
        held_at = time.monotonic()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    other = PostgresLedger(dsn, key, lease_seconds=0.5)
    try:
        while not (answer := await other.reserve(call(1))).granted:
            assert time.monotonic() - held_at < 5.0
            await asyncio.sleep(0.05)
    finally:
        await other.close()
    waited = time.monotonic() - held_at
    assert 0.5 + 1.0 - 0.1 <= waited <= 0.5 + 1.0 + 1.0
    assert answer.granted
    assert answer.held == 1


async def test_replicas_with_work_get_fair_shares_and_one_that_runs_dry_leaves_its_share(
    dsn: str,
) -> None:
    """Limit 30: alone, one replica takes the window; once both wait, each gets 15 of it; when
    one wants nothing more, the other takes the whole window."""
    key = new_key()
    a, b = PostgresLedger(dsn, key), PostgresLedger(dsn, key)
    try:
        first = await a.reserve(call(40, limit=30, window_seconds=1.0, window_fixed=True))
        assert len(first.granted) == 30
        done = tuple((slot, 0.0, True) for slot in first.granted)
        assert (await b.reserve(call(40))).granted == ()
        await a.reserve(ReserveCall(want=0, in_flight=(), done=done))
        await asyncio.sleep(1.05)
        shares = [await a.reserve(call(40)), await b.reserve(call(40))]
        assert [len(s.granted) for s in shares] == [15, 15]
        for ledger, share in zip((a, b), shares, strict=True):
            done = tuple((slot, 0.0, True) for slot in share.granted)
            await ledger.reserve(ReserveCall(want=0, in_flight=(), done=done))
        await asyncio.sleep(1.05)
        assert len((await b.reserve(call(40))).granted) == 30
    finally:
        await a.close()
        await b.close()


async def test_a_retry_after_and_a_refused_key_stop_every_replica(dsn: str) -> None:
    """One replica's 429 blocks the others' grants until it has passed; its 401 pause blocks
    them until it resumes."""
    key = new_key()
    a, b = PostgresLedger(dsn, key), PostgresLedger(dsn, key)
    try:
        await a.reserve(call(0, limit=100, window_seconds=10.0, window_fixed=True))
        await a.reserve(call(0, blocked_seconds=0.5))
        blocked = await b.reserve(call(1))
        assert blocked.granted == ()
        assert 0.3 < blocked.blocked_seconds <= 0.5
        await asyncio.sleep(0.55)
        assert len((await b.reserve(call(1))).granted) == 1
        await a.reserve(call(0, auth_pause_seconds=30.0))
        paused = await b.reserve(call(1))
        assert paused.granted == ()
        assert paused.auth_paused
        await a.reserve(call(0, auth_pause_seconds=0.0))
        assert len((await b.reserve(call(1))).granted) == 1
    finally:
        await a.close()
        await b.close()


async def test_requests_outside_the_ledger_hold_slots_for_a_window(dsn: str) -> None:
    """A count of requests no replica reserved (a script on the same key) holds that many
    slots: with 8 outside on a limit of 10, two are left."""
    key = new_key()
    a = PostgresLedger(dsn, key)
    try:
        await a.reserve(call(0, limit=10, window_seconds=10.0, window_fixed=True, outside=8))
        assert len((await a.reserve(call(5))).granted) == 2
    finally:
        await a.close()


@pytest.mark.parametrize("fault", [Fault.REFUSE, Fault.BLACKHOLE])
async def test_postgres_going_away_falls_back_to_the_local_limiter_and_recovers(
    dsn: str, fault: Fault
) -> None:
    """Postgres refusing or silent (blackholed) mid-drain: acquire() keeps answering from the
    header-based limiter within one call timeout, the fallback is counted; when Postgres is
    back the ledger takes over again and the requests sent meanwhile are in it."""
    key = new_key()
    with FaultProxy.for_postgres(dsn) as (proxy, through):
        metrics = Metrics()
        local = RateLimiter(initial_rate_per_minute=600, max_in_flight=4, window_seconds=10.0)
        ledger = PostgresLedger(through, key)
        pacer = SharedPacer(
            local=local,
            ledger=ledger,
            metrics=metrics,
            window_hint_seconds=10.0,
            call_timeout_seconds=0.5,
        )
        stop = asyncio.Event()
        caller = asyncio.create_task(pacer.run(stop))
        try:
            permit = await asyncio.wait_for(pacer.acquire(), 5)
            assert permit.slot is not None
            permit.complete(200, HEADERS)
            proxy.set(fault)
            started = time.monotonic()
            sent_outside = 0
            while time.monotonic() - started < 2.0:  # a few requests, far below the limit
                permit = await asyncio.wait_for(pacer.acquire(), 2)
                if permit.slot is None:
                    sent_outside += 1
                permit.complete(200, HEADERS)
                await asyncio.sleep(0.2)
            assert pacer.in_fallback
            assert sent_outside >= 1
            assert (
                metrics.registry.get_sample_value("pivotal_sync_quota_ledger_fallbacks_total") == 1
            )
            assert metrics.registry.get_sample_value("pivotal_sync_quota_ledger_in_use") == 0
            proxy.heal()
            deadline = time.monotonic() + 5
            while pacer.in_fallback:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            permit = await asyncio.wait_for(pacer.acquire(), 5)
            assert permit.slot is not None
            permit.complete(200, HEADERS)
        finally:
            stop.set()
            await caller
