"""`make demo` (`python -m devtools.demo`): the daemon end to end on local stand-ins.

Starts a `tansu` broker, a Postgres server (embedded, unless PIVOTAL_SYNC_DATABASE_URL names
one) and the Pivotal sandbox with a compressed rate-limit window; publishes a generated CRM
stream (customers, updates, contacts, onboardings, deletes, a few malformed records); runs the
real `pivotal-sync run` until it has caught up, showing progress; then prints a summary read
from the daemon's own records and checks the sandbox's final state against the stream.
Ctrl-C stops everything cleanly.

`--format debezium` publishes the same CRM as a database's change data capture instead: three
tables on three topics with the CRM's column names, read through a mapping file
(`devtools/debezium_stream.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.checkpoints import CheckpointStore
from daemon.events import EntityKind
from daemon.sandbox.testing import SandboxAdmin, running_sandbox
from devtools.debezium_stream import TABLES, debezium_stream, mapping_yaml
from devtools.local_services import Broker, Postgres, create_database, drop_database
from devtools.local_stack import DaemonProcess, broker_settings, committed_offsets, daemon_env
from devtools.sample_stream import (
    Message,
    StreamSpec,
    compare,
    expected_state,
    generate,
    publish,
)

DEMO_KEY = "pivotal_demo_key_0001"
# 100 requests per 10 s: Pivotal's minute compressed six-fold, so the demo takes about a minute.
DEMO_LIMIT = 100
DEMO_WINDOW_SECONDS = 10
PARTITIONS = 3
CATCH_UP_TIMEOUT_SECONDS = 600.0


def _say(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description="Run pivotal-sync end to end on local stand-ins (broker, Postgres, sandbox).",
    )
    parser.add_argument("--customers", type=int, default=60, help="customers in the sample stream")
    parser.add_argument("--keep-going", action="store_true", help="keep running after catching up")
    parser.add_argument(
        "--format",
        choices=("cloudevents", "debezium"),
        default="cloudevents",
        help="the stream's shape: CloudEvents on one topic, or Debezium on three",
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pivotal-sync-demo-"))
    _say(f"pivotal-sync demo — logs in {workdir}")
    _say("starting a tansu broker, Postgres and the Pivotal sandbox on loopback…")
    with (
        Broker.start(log_dir=workdir) as broker,
        Postgres.start(os.environ.get("PIVOTAL_SYNC_DATABASE_URL")) as postgres,
        running_sandbox(
            "--window-seconds", str(DEMO_WINDOW_SECONDS), "--key", f"{DEMO_KEY}:{DEMO_LIMIT}"
        ) as sandbox_url,
    ):
        return asyncio.run(_demo(args, workdir, broker, postgres, sandbox_url))


async def _demo(
    args: argparse.Namespace, workdir: Path, broker: Broker, postgres: Postgres, sandbox_url: str
) -> int:
    database = f"pivotal_sync_demo_{uuid.uuid4().hex[:8]}"
    database_url = await create_database(postgres.dsn, database)
    try:
        return await _run(args, workdir, broker, database_url, sandbox_url)
    finally:
        await drop_database(postgres.dsn, database)


async def _run(
    args: argparse.Namespace, workdir: Path, broker: Broker, database_url: str, sandbox_url: str
) -> int:
    group = "pivotal-sync-demo"
    if args.format == "debezium":
        spec = StreamSpec(
            customers=args.customers, malformed=0, prefix="demo", customer_delete_fraction=0
        )
    else:
        spec = StreamSpec(customers=args.customers, malformed=8, prefix="demo")
    messages = generate(spec)
    expected = expected_state(messages)
    out = await _publish(args.format, broker, messages, workdir)
    published, ends = out.records, out.ends
    _say(
        f"published {published} CRM records for {args.customers} customers "
        f"({expected.invalid + out.invalid} malformed) to {', '.join(sorted({t for t, _ in ends}))}"
    )
    _say(f"Pivotal sandbox: {DEMO_LIMIT} requests per {DEMO_WINDOW_SECONDS} s on the demo key")
    env = daemon_env(
        bootstrap_servers=broker.bootstrap_servers,
        topic=next(iter(ends))[0],
        group_id=group,
        database_url=database_url,
        api_url=f"{sandbox_url}/api/v1",
        api_key=DEMO_KEY,
        RATE_LIMIT_PER_MINUTE=str(DEMO_LIMIT * 60 / DEMO_WINDOW_SECONDS),
        RATE_LIMIT_WINDOW_SECONDS=str(DEMO_WINDOW_SECONDS),
        **broker_settings(broker),
        **out.settings,
    )
    daemon = DaemonProcess(env, workdir / "daemon.log")
    admin = SandboxAdmin(sandbox_url)
    started = time.monotonic()
    try:
        daemon.wait_ready()
        _say("daemon ready; syncing (Ctrl-C stops everything)…")
        while True:
            await asyncio.sleep(1.0)
            if not daemon.alive():
                _say(f"the daemon exited early:\n{daemon.tail()}")
                return 1
            finished = daemon.finished()
            stats = admin.stats()
            _say(
                f"  [{time.monotonic() - started:5.1f} s] events {int(finished)}/{published}"
                f" · requests {stats.get('requests_total', '?')}"
                f" · 429s {stats.get('rate_limited_total', '?')}"
            )
            committed = await _committed(broker, group, {t for t, _ in ends})
            if finished >= published and all(
                committed.get(where, -1) >= end for where, end in ends.items()
            ):
                break
            if time.monotonic() - started > CATCH_UP_TIMEOUT_SECONDS:
                _say("gave up waiting for the daemon to catch up")
                return 1
        elapsed = time.monotonic() - started
        code = daemon.stop()
        await _summary(database_url, admin, expected, elapsed, daemon)
        _say(f"daemon stopped with exit code {code}")
        return 0 if code == 0 else 1
    finally:
        daemon.stop()
        admin.close()


@dataclass
class Published:
    records: int
    # End offset (last + 1) per topic and partition.
    ends: dict[tuple[str, int], int]
    # The daemon's extra settings (names without the PIVOTAL_SYNC_ prefix).
    settings: dict[str, str] = field(default_factory=dict)
    # Broken records added by the shape itself.
    invalid: int = 0


async def _publish(shape: str, broker: Broker, messages: list[Message], workdir: Path) -> Published:
    """Publish the stream in `shape`."""
    if shape == "cloudevents":
        topic = "crm.customers"
        await broker.create_topic(topic, partitions=PARTITIONS)
        ends = await publish(broker.bootstrap_servers, topic, messages)
        return Published(len(messages), {(topic, p): end for p, end in ends.items()})
    stream = debezium_stream(messages)
    topics = {kind: f"crm.public.{TABLES[kind]}" for kind in EntityKind}
    all_ends: dict[tuple[str, int], int] = {}
    for kind, topic in topics.items():
        await broker.create_topic(topic, partitions=PARTITIONS)
        ends = await publish(broker.bootstrap_servers, topic, stream.tables[kind])
        all_ends.update({(topic, p): end for p, end in ends.items()})
    mapping = workdir / "mapping.yaml"
    mapping.write_text(mapping_yaml(topics))
    _say(f"Debezium shape: three tables on three topics, mapped by {mapping}")
    settings = {"KAFKA_TOPICS": ",".join(topics.values()), "MAPPING_FILE": str(mapping)}
    return Published(len(stream), all_ends, settings, stream.invalid)


async def _committed(broker: Broker, group: str, topics: set[str]) -> dict[tuple[str, int], int]:
    committed: dict[tuple[str, int], int] = {}
    for topic in topics:
        offsets = await committed_offsets(broker.bootstrap_servers, group, topic, PARTITIONS)
        committed.update({(topic, p): offset for p, offset in offsets.items()})
    return committed


async def _summary(
    database_url: str, admin: SandboxAdmin, expected: Any, elapsed: float, daemon: DaemonProcess
) -> None:
    async with await CheckpointStore.connect(database_url) as store:
        summary = await store.summary()
    stats = admin.stats()
    problems = compare(expected, admin.records())
    _say("")
    _say(f"caught up in {elapsed:.1f} s — summary from the daemon's own records:")
    for outcome, count in sorted(summary.outcomes.items()):
        _say(f"  {outcome:<14} {count}")
    _say("  dead letters by reason:")
    for reason, count in sorted(summary.dead_letters.items()):
        _say(f"    {reason:<20} {count}")
    _say("from the Pivotal sandbox:")
    _say(f"  requests        {stats.get('requests_total')}  {stats.get('by_method')}")
    _say(f"  429 responses   {stats.get('rate_limited_total')}")
    _say(f"  duplicates      {len(stats.get('duplicates', []))}")
    verdict = "matches the stream" if not problems else f"{len(problems)} differences"
    _say(f"final state in Pivotal: {verdict}")
    for problem in problems[:10]:
        _say(f"  - {problem}")


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)
