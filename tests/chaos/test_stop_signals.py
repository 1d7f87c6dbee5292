"""SIGTERM at any moment of the daemon's life ends it with exit 0 within the drain timeout plus
a few seconds: during start-up, the group join, a rebalance, a Postgres outage."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from pathlib import Path

from devtools.fault_proxy import Fault, FaultProxy
from devtools.local_stack import DaemonProcess
from devtools.sample_stream import StreamSpec, generate
from tests.chaos.support import FULL
from tests.chaos.table import Row
from tests.e2e.conftest import ScenarioFactory

# Interpreter start-up and the first imports take ~0.3 s here; before the handler was
# installed first thing it took 2.7-4.1 s (imports, settings, the event loop), and a SIGTERM
# in that window ended the process by the signal (exit -15).
MAX_SECONDS_TO_HANDLER = 1.0
DRAIN_SECONDS = 5.0  # the scenario's PIVOTAL_SYNC_DRAIN_TIMEOUT_SECONDS
# Past the drain: the final checkpoint flush, the offset commit, closing the clients.
GRACE_SECONDS = 5.0
STREAM = StreamSpec(customers=15, malformed=2, prefix="term", seed=9)


def terminate(daemon: DaemonProcess, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
    """Send `sig`; the exit code and how long the exit took (SIGKILL past a generous bound)."""
    started = time.monotonic()
    daemon.process.send_signal(sig)
    try:
        code = daemon.process.wait(DRAIN_SECONDS + GRACE_SECONDS + 20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        code = -9
    return code, time.monotonic() - started


def assert_clean_exit(daemon: DaemonProcess, code: int, seconds: float, moment: str) -> None:
    assert code == 0, f"{moment}: exit {code}\n{daemon.tail(40)}"
    assert seconds < DRAIN_SECONDS + GRACE_SECONDS, (
        f"{moment}: took {seconds:.1f} s\n{daemon.tail(60)}"
    )


async def test_sigterm_and_sigint_during_start_up_exit_0_at_once(
    scenario: ScenarioFactory, chaos_table: list[Row]
) -> None:
    """The handler is in place within a moment of the process starting (the interpreter's own
    start-up is the only gap), and a signal at any moment after it ends the daemon with 0."""
    rng = random.Random(18)
    async with scenario() as s:
        await s.publish(generate(STREAM))
        moments = [0.0, 0.2, *(rng.uniform(0.0, 3.0) for _ in range(5 if FULL else 1))]
        for delay in moments:
            for sig in (signal.SIGTERM, signal.SIGINT):
                daemon = s.start_daemon()
                waited = await handler_installed(daemon)
                assert waited < MAX_SECONDS_TO_HANDLER, (
                    f"no {sig.name} handler after {waited:.2f} s"
                )
                await asyncio.sleep(delay)
                code, seconds = terminate(daemon, sig)
                assert_clean_exit(daemon, code, seconds, f"{sig.name} {delay:.2f} s after start")
        chaos_table.append(
            Row(
                scenario="stop during start-up",
                fault=f"SIGTERM/SIGINT x{2 * len(moments)}",
                events=0,
                lost=0,
                duplicates=0,
                exit_code=0,
            )
        )


async def handler_installed(daemon: DaemonProcess) -> float:
    """Seconds from the spawn until the process catches SIGTERM (/proc/PID/status SigCgt)."""
    started = time.monotonic()
    while time.monotonic() - started < MAX_SECONDS_TO_HANDLER * 3:
        if catches_sigterm(daemon.process.pid):
            break
        await asyncio.sleep(0.002)
    return time.monotonic() - started


def catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(
        (line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0"
    )
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


async def test_sigterm_during_a_group_join_that_never_answers_exits_0(
    scenario: ScenarioFactory,
) -> None:
    """The broker accepts the connection and says nothing: the join is abandoned on SIGTERM."""
    async with scenario() as s:
        with FaultProxy.running(s.broker.bootstrap_servers) as kafka:
            kafka.set(Fault.BLACKHOLE)
            daemon = s.start_daemon(KAFKA_BOOTSTRAP_SERVERS=kafka.address)
            await asyncio.sleep(3.0)
            assert daemon.alive()
            code, seconds = terminate(daemon)
        assert_clean_exit(daemon, code, seconds, "during a blackholed group join")


async def test_sigterm_while_postgres_refuses_or_never_answers_exits_0(
    scenario: ScenarioFactory,
) -> None:
    """Connecting to Postgres at start-up, refused or blackholed: SIGTERM ends it cleanly."""
    async with scenario() as s:
        for fault in (Fault.REFUSE, Fault.BLACKHOLE):
            with FaultProxy.for_postgres(s.database_url) as (postgres, dsn):
                postgres.set(fault)
                daemon = s.start_daemon(DATABASE_URL=dsn)
                await asyncio.sleep(3.0)
                code, seconds = terminate(daemon)
            assert_clean_exit(daemon, code, seconds, f"postgres {fault} at start-up")


async def test_sigterm_during_a_postgres_blackhole_mid_stream_exits_0_and_loses_nothing(
    scenario: ScenarioFactory,
) -> None:
    """Work in flight, the database silent: the drain is bounded, the restart finishes exactly."""
    async with scenario(limit=300, window=2) as s:
        expected = await s.publish(generate(STREAM))
        with FaultProxy.for_postgres(s.database_url) as (postgres, dsn):
            daemon = s.start_daemon(DATABASE_URL=dsn)
            daemon.wait_ready()
            await asyncio.sleep(1.0)
            postgres.set(Fault.BLACKHOLE)
            await asyncio.sleep(2.0)
            code, seconds = terminate(daemon)
        assert_clean_exit(daemon, code, seconds, "postgres blackholed mid-stream")
        s.start_daemon()
        await s.wait_caught_up()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []


async def test_sigterm_during_a_rebalance_exits_0_and_the_other_member_finishes(
    scenario: ScenarioFactory,
) -> None:
    """A second member joins; the first is stopped while partitions move: exit 0, exact state."""
    async with scenario(limit=300, window=2) as s:
        expected = await s.publish(generate(STREAM))
        first = s.start_daemon()
        first.wait_ready()
        second = s.start_daemon()
        await asyncio.sleep(0.5)  # the join of the second triggers the rebalance
        code, seconds = terminate(first)
        assert_clean_exit(first, code, seconds, "during a rebalance")
        await s.wait_caught_up()
        assert second.alive()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []
