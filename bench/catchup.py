"""Catch-up benchmarks: events that need no request, against the speed of reading Kafka.

Each scenario publishes a backlog to the local broker, then reads it in the same run with a
bare aiokafka consume loop (fetch + `json.loads`, nothing else: what this machine can read),
with the real `pivotal-sync run` process against Postgres and the sandbox, and with the bare
loop again.
The row gives both rates, their ratio, the daemon's peak RSS and the Postgres work per 1,000
events (statements when `pg_stat_statements` is loaded, else transactions from
`pg_stat_database`).

1. reread — N events whose checkpoints all exist, read by a new consumer group (a group reset
   or a lost offsets topic). Goal ≥ 25 % of the bare loop.
2. coalescing — N updates over 5,000 customers that exist already, the sandbox slowed down
   (`--latency-ms`) so that updates of an entity pile up and merge. Goal ≥ 15 %.
3. mix — N events, 95 % needing no request: 85 % already finished (replayed), 10 % stale
   (`sequence` not newer than the entity map's), 5 % fresh updates. Goal ≥ 10 %.

The daemon's rate runs from the first event it consumed to the last it finished (its
/metrics, polled every 0.2 s); the bare loop's from its first record to its last, measured
before and after the daemon (the mean is the reference). Everything else is excluded on both
sides: start-up, group join, publishing. On a shared machine wall time is noisy, so the row
also gives CPU time per event (the daemon's process, the bare loop's own) and their ratio.
"read" is the consumer's own pace: from the first event consumed to the last one read (lag 0);
where requests remain to be sent then (coalescing: one per entity), the finish trails it.

    python -m bench.catchup [--only reread,coalescing,mix] [--events 500000]
                            [--coalescing-events N (default: --events)]
                            [--latency-ms 200] [--profile DIR] [--set NAME=VALUE ...]

`--profile DIR` records the daemon with py-spy during each measured run (raw collapsed stacks,
`DIR/<scenario>.txt`; `py-spy` must be on PATH, the dev group installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from bench.pipeline import HUGE_LIMIT, KEY, PARTITIONS, Stack, local_stack
from daemon.sandbox.testing import SandboxAdmin, running_sandbox
from devtools.local_services import create_database, drop_database
from devtools.local_stack import DaemonProcess, broker_settings, committed_offsets, daemon_env
from devtools.sample_stream import Message, publish

CUSTOMERS = 5_000
# Each /metrics scrape costs the daemon ~6 ms (measured with py-spy): poll no more often.
POLL_SECONDS = 0.2
CATCH_UP_LIMIT_SECONDS = 900.0
SOURCE = "crm/bench"
TIME = "2026-11-26T10:00:00Z"
STATUSES = ("onboarding", "active", "at_risk")
TITLES = ("CEO", "CTO", "Ops lead", "Head of Support")
# The daemon's settings in every scenario: what an operator catching up would run with.
DAEMON_SETTINGS = {"MAX_IN_FLIGHT": "64", "RATE_LIMIT_WINDOW_SECONDS": "10"}


# -- the streams ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One record to publish, with what the checkpoint table should say about it (if done)."""

    message: Message
    event_id: str
    kind: str
    external_id: str


def _event(
    event_id: str, type_: str, subject: str, data: dict[str, Any] | None, sequence: int
) -> bytes:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": type_,
        "subject": subject,
        "time": TIME,
        "sequence": str(sequence),
    }
    if data is not None:
        event["data"] = data
    return json.dumps(event).encode()


def _customer(i: int) -> str:
    return f"cust_{i:06d}"


def _update(prefix: str, n: int, customer: int, sequence: int, contact: bool) -> Planned:
    """A customer update, or an update of the customer's contact: the bulk of a CRM stream."""
    cid = _customer(customer)
    event_id = f"{prefix}_{n:08d}"
    if contact:
        subject = f"{cid}_ct0"
        data: dict[str, Any] = {"customer": cid, "title": TITLES[n % len(TITLES)]}
        value = _event(event_id, "contact.updated", subject, data, sequence)
        return Planned(Message(cid.encode(), value), event_id, "contact", subject)
    data = {"status": STATUSES[n % len(STATUSES)], "mrr": (n * 7919) % 500_000}
    value = _event(event_id, "customer.updated", cid, data, sequence)
    return Planned(Message(cid.encode(), value), event_id, "customer", cid)


def creates(customers: int) -> list[Planned]:
    """One `customer.created` per customer (sequence 1)."""
    planned = []
    for i in range(customers):
        cid = _customer(i)
        data = {"name": f"Customer {i}", "slug": f"cust-{i:06d}", "status": "onboarding"}
        value = _event(f"create_{i:06d}", "customer.created", cid, data, 1)
        planned.append(Planned(Message(cid.encode(), value), f"create_{i:06d}", "customer", cid))
    return planned


def updates(events: int, customers: int, prefix: str, *, contacts: bool) -> list[Planned]:
    """`events` updates spread round-robin over `customers`, sequences rising per entity from 2.
    With `contacts`, every other update is of the customer's contact instead."""
    planned = []
    for n in range(events):
        customer = n % customers
        contact = contacts and (n // customers) % 2 == 1
        planned.append(_update(prefix, n, customer, 2 + n // customers, contact))
    return planned


def mix(events: int, customers: int) -> tuple[list[Planned], list[Planned]]:
    """(stream, already finished): 85 % replayed, 10 % stale, 5 % fresh, interleaved."""
    stream: list[Planned] = []
    finished: list[Planned] = []
    fresh_sequence = [1] * customers
    for n in range(events):
        customer = (n * 7) % customers
        slot = n % 20
        if slot < 17:  # replayed: its checkpoint exists
            planned = _update("mix_done", n, customer, 1, contact=n % 2 == 1)
            finished.append(planned)
        elif slot < 19:  # stale: sequence 1 is what the customer's create applied
            planned = _update("mix_stale", n, customer, 1, contact=False)
        else:  # fresh
            fresh_sequence[customer] += 1
            planned = _update("mix_new", n, customer, fresh_sequence[customer], contact=False)
        stream.append(planned)
    return stream, finished


# -- the two readers -------------------------------------------------------------------------------


async def bare_loop(bootstrap_servers: str, topic: str, total: int) -> tuple[float, float]:
    """Events/s and CPU µs per event of fetch + JSON decode over the whole topic, in a new
    consumer group."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen, started, cpu = 0, 0.0, 0.0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                if not started and records:
                    started, cpu = time.perf_counter(), time.process_time()
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        cpu_us = (time.process_time() - cpu) * 1e6 / total
        return total / (time.perf_counter() - started), cpu_us
    finally:
        await consumer.stop()


@dataclass
class DaemonRun:
    events_per_second: float
    peak_rss_mb: float
    seconds: float
    cpu_seconds: float
    # From the first consumed event to the last one read from Kafka (lag 0): the consumer's
    # own pace. The finish can trail it by the requests still to send.
    read_seconds: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


CONSUMED = "pivotal_sync_events_consumed_total"
FINISHED = "pivotal_sync_events_finished_total"


def _counts(daemon: DaemonProcess) -> tuple[float, float]:
    # Polled five times a second: only the two counters, not the whole exposition.
    samples = daemon.metrics(CONSUMED, FINISHED)
    consumed = sum(v for k, v in samples.items() if k.startswith(CONSUMED))
    finished = sum(v for k, v in samples.items() if k.startswith(FINISHED))
    return consumed, finished


@contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[None]:
    if out is None:
        yield
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy on PATH (make env installs the dev group)")
    recorder = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(30)


async def run_daemon(daemon: DaemonProcess, events: int, profile: Path | None = None) -> DaemonRun:
    """Time the daemon from its first consumed event to its `events`-th finished one."""
    daemon.wait_ready()
    deadline = time.monotonic() + CATCH_UP_LIMIT_SECONDS
    with _profiled(daemon.process.pid, profile):
        before, started = time.perf_counter(), 0.0
        cpu_before = _cpu_seconds(daemon.process.pid)
        while not started:
            consumed, _ = _counts(daemon)
            now = time.perf_counter()
            if consumed:
                started = (before + now) / 2  # it began between the two polls
            else:
                cpu_before = _cpu_seconds(daemon.process.pid)
            before = now
            await _tick(daemon, deadline)
        read = 0.0
        while True:
            consumed, finished = _counts(daemon)
            now = time.perf_counter()
            if not read and consumed >= events:
                read = (before + now) / 2 - started
            if finished >= events:
                break
            before = now
            await _tick(daemon, deadline)
    cpu = _cpu_seconds(daemon.process.pid) - cpu_before
    seconds = (before + now) / 2 - started
    peak = _peak_rss_mb(daemon.process.pid)
    return DaemonRun(events / seconds, peak, seconds, cpu, read or seconds)


async def _tick(daemon: DaemonProcess, deadline: float) -> None:
    if not daemon.alive() or time.monotonic() > deadline:
        raise RuntimeError(f"daemon did not catch up:\n{daemon.tail()}")
    await asyncio.sleep(POLL_SECONDS)


# -- Postgres -------------------------------------------------------------------------------------


@dataclass
class Database:
    server_dsn: str
    name: str
    dsn: str


# Databases this run created: dropped at the end, a shared server keeps nothing of a run.
_created: list[Database] = []


async def _database(stack: Stack) -> Database:
    name = f"catchup_{uuid.uuid4().hex[:10]}"
    db = Database(stack.postgres.dsn, name, await create_database(stack.postgres.dsn, name))
    _created.append(db)
    return db


async def postgres_work(db: Database) -> tuple[str, float]:
    """("statements", n) from pg_stat_statements when loaded, else ("transactions", n)."""
    conn = await asyncpg.connect(db.server_dsn)
    try:
        try:
            preloaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
            if "pg_stat_statements" in preloaded:
                # Loaded by the server, but its view exists only where the extension is created
                # (by a superuser: another role falls back to transactions below).
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            calls = await conn.fetchval(
                "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements AS s"
                " JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = $1",
                db.name,
            )
            return "statements", float(calls)
        except asyncpg.PostgresError:
            pass
        xacts = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", db.name
        )
        return "transactions", float(xacts)
    finally:
        await conn.close()


async def insert_checkpoints(
    db: Database, topic: str, planned: Sequence[Planned], positions: dict[str, tuple[int, int]]
) -> None:
    """Checkpoint rows for `planned`, as a previous run of the daemon would have left them."""
    rows = [
        (p.event_id, "sent", p.kind, p.external_id, topic, *positions[p.event_id]) for p in planned
    ]
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.copy_records_to_table(
            "checkpoints",
            records=rows,
            columns=[
                "event_id",
                "outcome",
                "entity_kind",
                "entity_external_id",
                "topic",
                "kafka_partition",
                "kafka_offset",
            ],
        )
        await conn.execute("ANALYZE checkpoints")
    finally:
        await conn.close()


async def positions_of(
    bootstrap_servers: str, topic: str, total: int
) -> dict[str, tuple[int, int]]:
    """Event id → (partition, offset), read back from the topic (not timed)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, tuple[int, int]] = {}
    try:
        seen = 0
        while seen < total:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    found[json.loads(r.value)["id"]] = (r.partition, r.offset)
                seen += len(records)
    finally:
        await consumer.stop()
    return found


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """What one scenario needs from the shared steps."""

    name: str
    goal: float  # the fraction of the bare loop to reach
    stack: Stack
    topic: str = field(default_factory=lambda: f"catchup-{uuid.uuid4().hex[:10]}")
    group: str = field(default_factory=lambda: f"group-{uuid.uuid4().hex[:8]}")
    # PIVOTAL_SYNC_* settings (without the prefix) on top of DAEMON_SETTINGS, from --set.
    settings: dict[str, str] = field(default_factory=dict)

    def daemon(self, db: Database, sandbox_url: str, log: str) -> DaemonProcess:
        env = daemon_env(
            bootstrap_servers=self.stack.broker.bootstrap_servers,
            topic=self.topic,
            group_id=self.group,
            database_url=db.dsn,
            api_url=f"{sandbox_url}/api/v1",
            api_key=KEY,
            **broker_settings(self.stack.broker),
            **{**DAEMON_SETTINGS, **self.settings},
        )
        return DaemonProcess(env, self.stack.workdir / log)

    async def publish(self, planned: Sequence[Planned]) -> dict[int, int]:
        return await publish(
            self.stack.broker.bootstrap_servers, self.topic, [p.message for p in planned]
        )

    async def wait_committed(self, ends: dict[int, int], daemon: DaemonProcess) -> None:
        """The daemon's group committed every partition to its end (the run was safe)."""
        deadline = time.monotonic() + 60
        while True:
            committed = await committed_offsets(
                self.stack.broker.bootstrap_servers, self.group, self.topic, PARTITIONS
            )
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                return
            if time.monotonic() > deadline or not daemon.alive():
                raise RuntimeError(f"offsets not committed: {committed} vs {ends}")
            await asyncio.sleep(0.2)


async def measure(
    scenario: Scenario,
    db: Database,
    sandbox_url: str,
    events: int,
    total_in_topic: int,
    ends: dict[int, int],
    profile: Path | None,
) -> dict[str, object]:
    """Bare loop, daemon, bare loop again; the row of the table."""
    bootstrap = scenario.stack.broker.bootstrap_servers
    bare_before, bare_cpu_before = await bare_loop(bootstrap, scenario.topic, total_in_topic)
    kind, work_before = await postgres_work(db)
    daemon = scenario.daemon(db, sandbox_url, f"{scenario.name}.log")
    try:
        run = await run_daemon(daemon, events, profile)
        await scenario.wait_committed(ends, daemon)
    finally:
        daemon.stop()
    _, work_after = await postgres_work(db)
    bare_after, bare_cpu_after = await bare_loop(bootstrap, scenario.topic, total_in_topic)
    bare = (bare_before + bare_after) / 2
    ratio = run.events_per_second / bare
    # CPU per event is steadier than wall time on a shared machine: the same ratio in CPU.
    bare_cpu = (bare_cpu_before + bare_cpu_after) / 2
    daemon_cpu = run.cpu_seconds * 1e6 / events
    return {
        "scenario": scenario.name,
        "events": events,
        "daemon events/s": round(run.events_per_second),
        "bare loop events/s": round(bare),
        "bare runs": f"{bare_before:,.0f} / {bare_after:,.0f}",
        "ratio": f"{ratio:.1%}",
        "goal": f"≥ {scenario.goal:.0%}",
        "met": "yes" if ratio >= scenario.goal else "no",
        "CPU µs/event daemon": round(daemon_cpu, 1),
        "CPU µs/event bare": round(bare_cpu, 1),
        "CPU ratio": f"{bare_cpu / daemon_cpu:.1%}",
        "peak RSS MB": round(run.peak_rss_mb, 1),
        f"{kind}/1k events": round((work_after - work_before) * 1000 / events, 2),
        "seconds": round(run.seconds, 2),
        "read events/s": round(events / run.read_seconds),
        "read ratio": f"{events / run.read_seconds / bare:.1%}",
        "read seconds": round(run.read_seconds, 2),
    }


async def _migrate(scenario: Scenario, db: Database) -> None:
    env = daemon_env(
        bootstrap_servers=scenario.stack.broker.bootstrap_servers,
        topic=scenario.topic,
        group_id=scenario.group,
        database_url=db.dsn,
        api_url="http://127.0.0.1:1/api/v1",
        api_key=KEY,
    )
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "daemon.cli", "migrate"),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise RuntimeError("pivotal-sync migrate failed")


async def _create_customers(
    scenario: Scenario, db: Database, sandbox_url: str, customers: int
) -> None:
    """Phase 0 of coalescing and mix: the customers exist in Pivotal and the entity map."""
    ends = await scenario.publish(creates(customers))
    daemon = scenario.daemon(db, sandbox_url, f"{scenario.name}-creates.log")
    try:
        await run_daemon(daemon, customers)
        await scenario.wait_committed(ends, daemon)
    finally:
        daemon.stop()


async def reread(
    stack: Stack, events: int, profile: Path | None, settings: dict[str, str]
) -> dict[str, object]:
    scenario = Scenario("reread", 0.25, stack, settings=settings)
    await stack.broker.create_topic(scenario.topic, partitions=PARTITIONS)
    db = await _database(stack)
    planned = updates(events, max(1, events // 10), "done", contacts=True)
    ends = await scenario.publish(planned)
    await _migrate(scenario, db)
    positions = await positions_of(stack.broker.bootstrap_servers, scenario.topic, events)
    await insert_checkpoints(db, scenario.topic, planned, positions)
    with running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url:
        return await measure(scenario, db, url, events, events, ends, _file(profile, "reread"))


async def coalescing(
    stack: Stack, events: int, latency_ms: float, profile: Path | None, settings: dict[str, str]
) -> dict[str, object]:
    scenario = Scenario("coalescing", 0.15, stack, settings=settings)
    await stack.broker.create_topic(scenario.topic, partitions=PARTITIONS)
    db = await _database(stack)
    with (
        running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url,
        SandboxAdmin(url) as admin,
    ):
        await _create_customers(scenario, db, url, CUSTOMERS)
        ends = await scenario.publish(updates(events, CUSTOMERS, "coal", contacts=False))
        admin.set_faults(latency_ms=latency_ms)
        row = await _measure_requests(
            admin, scenario, db, url, events, ends, _file(profile, "coalescing")
        )
    row["scenario"] = f"coalescing ({latency_ms:g} ms API latency)"
    return row


async def realistic_mix(
    stack: Stack, events: int, profile: Path | None, settings: dict[str, str]
) -> dict[str, object]:
    scenario = Scenario("mix", 0.10, stack, settings=settings)
    await stack.broker.create_topic(scenario.topic, partitions=PARTITIONS)
    db = await _database(stack)
    with (
        running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url,
        SandboxAdmin(url) as admin,
    ):
        await _create_customers(scenario, db, url, CUSTOMERS)
        stream, done = mix(events, CUSTOMERS)
        ends = await scenario.publish(stream)
        positions = await positions_of(
            stack.broker.bootstrap_servers, scenario.topic, CUSTOMERS + events
        )
        await insert_checkpoints(db, scenario.topic, done, positions)
        row = await _measure_requests(admin, scenario, db, url, events, ends, _file(profile, "mix"))
    row["scenario"] = "mix (85 % replayed, 10 % stale, 5 % fresh)"
    return row


async def _measure_requests(
    admin: SandboxAdmin,
    scenario: Scenario,
    db: Database,
    url: str,
    events: int,
    ends: dict[int, int],
    profile: Path | None,
) -> dict[str, object]:
    """`measure` after the customers' creates, with the requests the daemon sent meanwhile."""
    before = admin.stats()["requests_total"]
    row = await measure(scenario, db, url, events, CUSTOMERS + events, ends, profile)
    row["requests"] = admin.stats()["requests_total"] - before
    return row


def _file(directory: Path | None, name: str) -> Path | None:
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.txt"


async def _main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    settings = dict(item.split("=", 1) for item in args.set)
    rows: list[dict[str, object]] = []
    with local_stack() as stack:
        try:
            rows += await _scenarios(stack, args, only, settings)
        finally:
            for db in _created:
                await drop_database(db.server_dsn, db.name)
    for row in rows:
        print(" · ".join(f"{k}: {v}" for k, v in row.items()))


async def _scenarios(
    stack: Stack, args: argparse.Namespace, only: set[str], settings: dict[str, str]
) -> list[dict[str, object]]:
    rows = []
    if "reread" in only:
        rows.append(await reread(stack, args.events, args.profile, settings))
    if "coalescing" in only:
        events = args.coalescing_events or args.events
        rows.append(await coalescing(stack, events, args.latency_ms, args.profile, settings))
    if "mix" in only:
        rows.append(await realistic_mix(stack, args.events, args.profile, settings))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="reread,coalescing,mix")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--coalescing-events", type=int, default=0, help="0: --events")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a daemon setting without its PIVOTAL_SYNC_ prefix, e.g. MAX_PENDING_EVENTS=50000",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
