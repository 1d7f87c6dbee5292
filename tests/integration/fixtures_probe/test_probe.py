"""Start every stand-in through its fixture and report each server process to the leak test.

Each process must carry the report variable in its environment: the leak test then finds any
survivor by that variable alone, whatever its name or parent.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]

from devtools.local_services import Broker
from tests.integration.fixtures_probe.conftest import REPORT_VARIABLE


def report(kind: str, pid: int) -> None:
    assert psutil.Process(pid).environ().get(REPORT_VARIABLE) == os.environ[REPORT_VARIABLE]
    with Path(os.environ[REPORT_VARIABLE]).open("a") as file:
        file.write(f"{kind} {pid}\n")


async def test_the_broker_fixture_starts_a_broker(kafka_broker: Broker, kafka_topic: str) -> None:
    assert kafka_broker.process is not None
    report("broker", kafka_broker.process.pid)


async def test_the_database_fixture_starts_a_postgres_server(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        # Each connection has its own backend process, a child of the postmaster.
        backend_pid = await connection.fetchval("SELECT pg_backend_pid()")
        report("postgres", psutil.Process(backend_pid).ppid())
    finally:
        await connection.close()


def test_the_sandbox_fixture_starts_a_sandbox(sandbox_server: str) -> None:
    # The fixture yields only a URL; the sandbox is our one child running `daemon.cli sandbox`.
    sandboxes = [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if "sandbox" in child.cmdline() and "daemon.cli" in child.cmdline()
    ]
    assert len(sandboxes) == 1, sandboxes
    report("sandbox", sandboxes[0])
