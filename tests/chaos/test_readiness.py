"""/readyz answers on time whatever Postgres does, and says what is true."""

from __future__ import annotations

import asyncio
import time

import httpx

from devtools.fault_proxy import Fault, FaultProxy
from devtools.local_stack import DaemonProcess
from devtools.sample_stream import StreamSpec, generate
from tests.chaos.table import Row
from tests.e2e.conftest import ScenarioFactory

# The health ping's time-out (2 s) plus its interval while healthy (5 s), and some slack.
SECONDS_TO_NOT_READY = 9.0
# The ping's interval while Postgres is down (1 s), and some slack.
SECONDS_TO_READY_AGAIN = 4.0
# A probe that takes longer than this has failed in Kubernetes' eyes (its default is 1 s).
PROBE_TIMEOUT_SECONDS = 1.0
BLACKHOLE_SECONDS = 12.0
STREAM = StreamSpec(customers=30, malformed=0, prefix="ready", seed=4)


def probe(daemon: DaemonProcess) -> int:
    """/readyz as a kubelet asks it: a short time-out, and a late answer is a failure."""
    try:
        return httpx.get(f"{daemon.url}/readyz", timeout=PROBE_TIMEOUT_SECONDS).status_code
    except httpx.TimeoutException:
        return 0


async def until_status(daemon: DaemonProcess, status: int, limit: float) -> float:
    """Seconds until /readyz answers `status`; every probe must answer within its time-out."""
    started = time.monotonic()
    while (answer := await asyncio.to_thread(probe, daemon)) != status:
        assert answer != 0, "/readyz did not answer within the probe's time-out"
        assert time.monotonic() - started < limit, f"/readyz still {answer} after {limit} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def test_a_blackholed_postgres_makes_readyz_503_on_time_and_200_soon_after(
    scenario: ScenarioFactory, chaos_table: list[Row]
) -> None:
    """Postgres accepts connections and never answers: not ready within a bounded time, ready
    again promptly after, every probe answered on time, and the stream ends exact."""
    async with scenario(limit=300, window=2) as s:
        expected = await s.publish(generate(STREAM))
        with FaultProxy.for_postgres(s.database_url) as (postgres, dsn):
            started = time.monotonic()
            daemon = s.start_daemon(DATABASE_URL=dsn)
            daemon.wait_ready()
            postgres.set(Fault.BLACKHOLE)
            to_not_ready = await until_status(daemon, 503, SECONDS_TO_NOT_READY)
            await asyncio.sleep(max(0.0, BLACKHOLE_SECONDS - to_not_ready))
            assert await asyncio.to_thread(probe, daemon) == 503
            postgres.heal()
            to_ready = await until_status(daemon, 200, SECONDS_TO_READY_AGAIN)
            await s.wait_caught_up()
            problems = s.problems(expected)
            code = daemon.stop()
        chaos_table.append(
            Row(
                scenario=f"readiness: not ready {to_not_ready:.1f} s, ready {to_ready:.1f} s",
                fault=f"Postgres blackholed {BLACKHOLE_SECONDS:g} s",
                events=len(s.messages),
                lost=len(problems),
                duplicates=len(s.admin.stats()["duplicates"]),
                catch_up_seconds=round(time.monotonic() - started, 1),
                exit_code=code,
            )
        )
        assert problems == []
        assert s.admin.stats()["duplicates"] == []
        assert code == 0
