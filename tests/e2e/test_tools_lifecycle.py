"""The operator tools' life cycle: standard input, a fresh database, and stopping on a signal.

`kubectl exec -i pod -- pivotal-sync import - < customers.csv` is how a read-only pod gets a
file; on a fresh database the tools create the tables as `run` does; SIGTERM and SIGINT end
every command promptly (a container's PID 1 gets no default action for them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from daemon.checkpoints import MIGRATION_LOCK_KEY
from tests.e2e.conftest import ScenarioFactory
from tests.e2e.test_operator_tools import cli, command, customer_rows, env_of, eventually, write_csv

pytestmark = [pytest.mark.e2e]
# A stopped command must be gone well before Kubernetes' default 30 s grace period.
PROMPT_EXIT_SECONDS = 10.0


async def test_import_from_standard_input_on_a_fresh_database_is_synced_by_the_daemon(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    """`import - < file.csv` on a database nobody migrated; then the daemon syncs every row."""
    async with scenario(limit=3000, window=10) as s:
        rows, expected = customer_rows(40)
        path = write_csv(tmp_path / "customers.csv", rows, {})
        with path.open("rb") as stdin:
            done = subprocess.run(
                command(s, "import", "-", "--no-progress"),
                env={**os.environ, **env_of(s)},
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        assert "applied migrations 0001_initial" in done.stderr
        assert "rows read         40" in done.stdout
        assert "published         100" in done.stdout  # 40 customers, 40 contacts, 20 onboardings
        s.start_daemon()
        await eventually(lambda: s.problems(expected) == [], timeout=120)
        assert s.admin.stats()["duplicates"] == []


async def test_every_database_tool_works_on_a_fresh_database(scenario: ScenarioFactory) -> None:
    """dead-letters list on a database nobody migrated answers instead of asking for migrate."""
    async with scenario() as s:
        done = cli(s, "dead-letters", "list")
        assert done.returncode == 0, done.stderr
        assert "no dead letters match" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_migrate_stops_promptly_on_a_signal(
    scenario: ScenarioFactory, sig: signal.Signals
) -> None:
    """`migrate` waiting for the migration lock exits 128 + signal number when told to stop."""
    async with scenario() as s:
        holder = await asyncpg.connect(s.database_url)
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            process = subprocess.Popen(
                command(s, "migrate"),
                env={**os.environ, **env_of(s)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await _until_waiting_for_lock(holder)
            started = time.monotonic()
            process.send_signal(sig)
            code = await asyncio.to_thread(process.wait, PROMPT_EXIT_SECONDS)
            assert time.monotonic() - started < PROMPT_EXIT_SECONDS
            assert code == 128 + sig.value
        finally:
            await holder.close()


async def test_import_waiting_for_the_daemon_stops_promptly_on_sigterm(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    """`import --wait` with no daemon running exits 143 on SIGTERM instead of waiting on."""
    async with scenario() as s:
        rows, _ = customer_rows(5)
        path = write_csv(tmp_path / "customers.csv", rows, {})
        process = subprocess.Popen(
            command(s, "import", str(path), "--wait", "--no-progress"),
            env={**os.environ, **env_of(s)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(5)  # published and waiting: no daemon will ever finish them
        assert process.poll() is None, "import --wait ended without a daemon"
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, PROMPT_EXIT_SECONDS)
        assert code == 143


async def _until_waiting_for_lock(holder: asyncpg.Connection, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    while not await holder.fetchval(query):
        assert time.monotonic() < deadline, "migrate never waited for the lock"
        await asyncio.sleep(0.2)


def test_run_with_a_misspelt_variable_exits_2_naming_it() -> None:
    """`pivotal-sync run` with a typo exits 2 before connecting to anything."""
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run"],
        env={"PIVOTAL_SYNC_KAFKA_TOPPIC": "orders", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "PIVOTAL_SYNC_KAFKA_TOPPIC" in result.stderr
    assert "did you mean PIVOTAL_SYNC_KAFKA_TOPIC?" in result.stderr
