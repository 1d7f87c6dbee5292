"""End-to-end scenarios: the real `pivotal-sync run` process against broker, Postgres, sandbox.

Each scenario gets its own topic, database, consumer group and sandbox process, so tests never
see each other's state. The daemon is configured only by its environment, as in production.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.checkpoints import CheckpointStore
from daemon.sandbox.testing import SandboxAdmin, running_sandbox
from devtools.local_services import Broker, create_database, drop_database
from devtools.local_stack import DaemonProcess, broker_settings, committed_offsets, daemon_env
from devtools.sample_stream import ExpectedState, Message, compare, expected_state, publish
from tests.fixtures.kafka import MakeTopic

E2E_KEY = "pivotal_live_e2e00001"
PARTITIONS = 3
CATCH_UP_TIMEOUT_SECONDS = 240.0


@dataclass
class Scenario:
    broker: Broker
    topic: str
    group: str
    database_url: str
    sandbox_url: str
    admin: SandboxAdmin
    workdir: Path
    window: int = 10
    daemons: list[DaemonProcess] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)

    def start_daemon(
        self, executable: Sequence[str] | None = None, **settings: str
    ) -> DaemonProcess:
        env = daemon_env(
            bootstrap_servers=self.broker.bootstrap_servers,
            topic=self.topic,
            group_id=self.group,
            database_url=self.database_url,
            api_url=f"{self.sandbox_url}/api/v1",
            api_key=E2E_KEY,
            **{
                "DRAIN_TIMEOUT_SECONDS": "5",
                "AUTH_PROBE_INTERVAL_SECONDS": "1",
                "RATE_LIMIT_WINDOW_SECONDS": str(self.window),
                **broker_settings(self.broker),
                **settings,
            },
        )
        log = self.workdir / f"daemon-{len(self.daemons)}.log"
        daemon = (
            DaemonProcess(env, log, executable=executable)
            if executable
            else DaemonProcess(env, log)
        )
        self.daemons.append(daemon)
        return daemon

    async def publish(self, messages: Sequence[Message]) -> ExpectedState:
        self.messages.extend(messages)
        ends = await publish(self.broker.bootstrap_servers, self.topic, messages)
        self.ends.update(ends)
        return expected_state(self.messages)

    async def committed(self) -> dict[int, int]:
        return await committed_offsets(
            self.broker.bootstrap_servers, self.group, self.topic, PARTITIONS
        )

    async def caught_up(self) -> bool:
        committed = await self.committed()
        return all(committed.get(p, -1) >= end for p, end in self.ends.items())

    async def wait_caught_up(self, timeout: float = CATCH_UP_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not await self.caught_up():
            alive = [d for d in self.daemons if d.alive()]
            assert alive, "no daemon is running: " + "\n".join(d.tail() for d in self.daemons)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not caught up after {timeout} s: committed {await self.committed()}, "
                    f"ends {self.ends}\n{alive[0].tail()}"
                )
            await asyncio.sleep(0.5)

    def problems(self, expected: ExpectedState) -> list[str]:
        return compare(expected, self.admin.records())

    async def store(self) -> CheckpointStore:
        return await CheckpointStore.connect(self.database_url)


ScenarioFactory = Callable[..., AbstractAsyncContextManager[Scenario]]


@pytest.fixture
def scenario(
    kafka_broker: Broker, make_topic: MakeTopic, postgres_server_url: str, tmp_path: Path
) -> ScenarioFactory:
    """`async with scenario("--latency-ms", "50") as s:` — sandbox flags as arguments."""

    @asynccontextmanager
    async def make(
        *sandbox_args: str, limit: int = 3000, window: int = 10
    ) -> AsyncIterator[Scenario]:
        topic = await make_topic(PARTITIONS)
        name = f"e2e_{uuid.uuid4().hex[:12]}"
        database_url = await create_database(postgres_server_url, name)
        args = ("--window-seconds", str(window), "--key", f"{E2E_KEY}:{limit}", *sandbox_args)
        try:
            with running_sandbox(*args) as url, SandboxAdmin(url) as admin:
                s = Scenario(
                    broker=kafka_broker,
                    topic=topic,
                    group=f"group-{name}",
                    database_url=database_url,
                    sandbox_url=url,
                    admin=admin,
                    workdir=tmp_path,
                    window=window,
                )
                try:
                    yield s
                finally:
                    for daemon in s.daemons:
                        daemon.stop(timeout=15)
        finally:
            await drop_database(postgres_server_url, name)

    return make
