"""The stand-in fixtures: a real broker, real Postgres servers, and nothing left running after."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.local_services import Broker, Postgres, create_database, drop_database
from tests.fixtures.kafka import BOOTSTRAP_VARIABLE, MakeTopic
from tests.fixtures.postgres import SERVER_URL_VARIABLE
from tests.integration.fixtures_probe.conftest import REPORT_VARIABLE

ROOT = Path(__file__).parents[2]
PROBE_DIR = Path(__file__).parent / "fixtures_probe"
RECEIVE_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 90.0
USER_TABLES_SQL = """
    SELECT count(*) FROM pg_catalog.pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""


def consumer(topic: str, group: str, broker: Broker) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **broker.group_timeouts,
    )


async def test_a_committed_offset_survives_a_consumer_restart(
    make_topic: MakeTopic, kafka_broker: Broker
) -> None:
    topic = await make_topic(partitions=1)
    group = f"test-group-{uuid.uuid4().hex[:12]}"
    async with AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers) as producer:
        await producer.send_and_wait(topic, b"first")
        async with consumer(topic, group, kafka_broker) as first:
            async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
                assert (await first.getone()).value == b"first"
            await first.commit()
        await producer.send_and_wait(topic, b"second")
        async with consumer(topic, group, kafka_broker) as second:
            async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
                assert (await second.getone()).value == b"second"
            assert await second.committed(TopicPartition(topic, 0)) == 1


async def assert_fresh_database_is_empty_and_usable(server_dsn: str) -> None:
    name = f"test_fixtures_{uuid.uuid4().hex[:12]}"
    database_url = await create_database(server_dsn, name)
    try:
        connection = await asyncpg.connect(database_url)
        try:
            assert await connection.fetchval("SELECT current_database()") == name
            assert await connection.fetchval(USER_TABLES_SQL) == 0
            await connection.execute("CREATE TABLE probe (id int PRIMARY KEY)")
            await connection.execute("INSERT INTO probe VALUES (1)")
            assert await connection.fetchval("SELECT count(*) FROM probe") == 1
        finally:
            await connection.close()
    finally:
        await drop_database(server_dsn, name)
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(database_url)


def is_gone(pid: int) -> bool:
    # A zombie is gone: a postmaster's new parent may never reap it (PID 1 in some containers).
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.postgres
async def test_an_embedded_server_starts_serves_and_stops_even_when_a_server_url_is_set() -> None:
    with Postgres.start(url=None) as server:
        assert server.embedded
        assert server.pid is not None
        pid = server.pid
        await assert_fresh_database_is_empty_and_usable(server.dsn)
    assert is_gone(pid)
    socket_dir = server.dsn.split("host=", 1)[1].split("&", 1)[0]
    assert not Path(socket_dir).exists()


async def test_an_external_server_is_used_as_is_and_left_running(postgres_server_url: str) -> None:
    url = os.environ.get(SERVER_URL_VARIABLE) or postgres_server_url
    with Postgres.start(url=url) as server:
        assert not server.embedded
        assert server.dsn == url
        await assert_fresh_database_is_empty_and_usable(server.dsn)
    connection = await asyncpg.connect(url)
    await connection.close()


async def test_each_test_module_gets_a_fresh_empty_database(
    database_url: str, postgres_server_url: str
) -> None:
    assert database_url != postgres_server_url
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval(USER_TABLES_SQL) == 0
        await connection.execute("CREATE TABLE probe (id int PRIMARY KEY)")
    finally:
        await connection.close()


@pytest.mark.kafka
@pytest.mark.postgres
def test_no_broker_database_or_sandbox_process_survives_a_test_session(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    # The probe must start its own servers, whatever this session uses.
    env = {
        k: v for k, v in os.environ.items() if k not in {SERVER_URL_VARIABLE, BOOTSTRAP_VARIABLE}
    }
    # Only the sub-session's processes inherit this variable: it finds them whoever their parent.
    env[REPORT_VARIABLE] = str(report)
    command = [sys.executable, "-m", "pytest", str(PROBE_DIR), "-p", "no:cacheprovider", "-q"]
    command += [f"--basetemp={tmp_path / 'basetemp'}"]
    probe = subprocess.run(
        command,
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_SECONDS,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    started = dict(line.split() for line in report.read_text().splitlines())
    assert set(started) == {"broker", "postgres", "sandbox"}
    assert all(is_gone(int(pid)) for pid in started.values()), started
    assert survivors(str(report)) == []


def survivors(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if process.environ().get(REPORT_VARIABLE) == marker:
                found.append(f"{process.info['pid']}: {process.info['cmdline']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
