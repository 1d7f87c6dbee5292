"""The real daemon and tools against a secured cluster: SASL SCRAM over TLS, OAUTHBEARER and
mTLS to Kafka (tansu behind the TLS/SASL front), Postgres over `verify-full`.

Each misconfiguration a user can make is started for real and must show up as one log line
and a `/readyz` reason naming the setting to fix, while the daemon keeps retrying.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from daemon.config import load_settings
from daemon.kafka_clients import KafkaClients
from daemon.sandbox.testing import SandboxAdmin, running_sandbox
from daemon.tools.status import committed_offsets
from devtools.local_stack import DaemonProcess
from devtools.sample_stream import Message, StreamSpec, compare, expected_state, generate, publish
from tests.fixtures.certificates import Certificates
from tests.fixtures.secure_kafka import SecureKafka
from tests.fixtures.tls_postgres import TlsPostgres

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

KEY = "pivotal_live_secure0001"
PARTITIONS = 2
STREAM = StreamSpec(customers=10, malformed=2, seed=11)
CATCH_UP_TIMEOUT_SECONDS = 120.0
REASON_TIMEOUT_SECONDS = 30.0


@dataclass
class SecureRun:
    env: dict[str, str]
    kafka: KafkaClients
    topic: str
    group: str
    workdir: Path
    sandbox: SandboxAdmin
    daemons: list[DaemonProcess] = field(default_factory=list)

    def start_daemon(self, **overrides: str) -> DaemonProcess:
        daemon = DaemonProcess(
            {**self.env, **overrides}, self.workdir / f"daemon-{len(self.daemons)}.log"
        )
        self.daemons.append(daemon)
        return daemon

    def tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`pivotal-sync ARGS` with exactly the daemon's environment."""
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    async def caught_up(self, ends: dict[int, int]) -> bool:
        committed = await committed_offsets(self.kafka, self.group, self.topic, range(PARTITIONS))
        return all(committed.get(p, -1) >= end for p, end in ends.items())


RunFactory = Callable[[str], AbstractAsyncContextManager[SecureRun]]


@pytest.fixture
def secure_run(
    secure_kafka: SecureKafka,
    tls_postgres: TlsPostgres,
    certificates: Certificates,
    tmp_path: Path,
) -> RunFactory:
    @asynccontextmanager
    async def make(mode: str) -> AsyncIterator[SecureRun]:
        kafka_env = secure_kafka.secured(mode)
        kafka = KafkaClients(load_settings(kafka_env))
        name = f"secure_{uuid.uuid4().hex[:10]}"
        topic, dead_letters = f"{name}-events", f"{name}-dead"
        admin = kafka.admin()
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (topic, dead_letters)])
        finally:
            await admin.close()
        tls = {"sslmode": "verify-full", "sslrootcert": str(certificates.ca_file)}
        server = await asyncpg.connect(tls_postgres.url(**tls))
        try:
            await server.execute(f'CREATE DATABASE "{name}"')
        finally:
            await server.close()
        with running_sandbox("--window-seconds", "10", "--key", f"{KEY}:3000") as url:
            env = {
                **kafka_env,
                "PIVOTAL_API_KEY": KEY,
                "PIVOTAL_SYNC_API_URL": f"{url}/api/v1",
                "PIVOTAL_SYNC_KAFKA_TOPIC": topic,
                "PIVOTAL_SYNC_KAFKA_GROUP_ID": f"group-{name}",
                "PIVOTAL_SYNC_KAFKA_DEAD_LETTER_TOPIC": dead_letters,
                "PIVOTAL_SYNC_KAFKA_SESSION_TIMEOUT_MS": "1000",
                "PIVOTAL_SYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "250",
                "PIVOTAL_SYNC_DATABASE_URL": tls_postgres.url(name),
                "PIVOTAL_SYNC_DATABASE_SSLMODE": "verify-full",
                "PIVOTAL_SYNC_DATABASE_SSLROOTCERT": str(certificates.ca_file),
                "PIVOTAL_SYNC_DRAIN_TIMEOUT_SECONDS": "5",
                "PIVOTAL_SYNC_RATE_LIMIT_WINDOW_SECONDS": "10",
            }
            with SandboxAdmin(url) as sandbox:
                run = SecureRun(env, kafka, topic, f"group-{name}", tmp_path, sandbox)
                try:
                    yield run
                finally:
                    for daemon in run.daemons:
                        daemon.stop(timeout=15)

    return make


async def dead_letter_copies(run: SecureRun) -> int:
    """How many records the daemon's dead-letter producer wrote, read over the same security."""
    topic = run.env["PIVOTAL_SYNC_KAFKA_DEAD_LETTER_TOPIC"]
    # No group: a join on tansu takes longer than the 4 s OAuth sessions of the front.
    consumer = run.kafka.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        found = 0
        deadline = time.monotonic() + 20
        while found < STREAM.malformed and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            found += sum(len(batch) for batch in batches.values())
    finally:
        await consumer.stop()
    return found


def customers_csv(path: Path, count: int) -> Path:
    lines = ["external_id,name,slug,domain,status,plan"]
    lines += [
        f"imp_{n:03d},Imported {n},imported-{n:03d},i{n}.example,active,starter"
        for n in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("mode", ["scram-tls", "oauth", "mtls"])
async def test_a_stream_syncs_and_the_tools_work_over_a_secured_cluster(
    secure_run: RunFactory,
    secure_kafka: SecureKafka,
    mode: str,
) -> None:
    """Through SCRAM over TLS, OAUTHBEARER or mTLS, with Postgres on verify-full, the stream is
    mirrored exactly, and import, status and dead-letters work with the same settings."""
    async with secure_run(mode) as run:
        tokens_before = len(secure_kafka.tokens.issued)
        messages: list[Message] = generate(STREAM)
        ends = await publish(run.kafka, run.topic, messages)
        daemon = run.start_daemon()
        daemon.wait_ready()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
        while not await run.caught_up(ends):
            assert daemon.alive(), daemon.tail()
            assert time.monotonic() < deadline, daemon.tail()
            await asyncio.sleep(0.5)
        problems = compare(expected_state(messages), run.sandbox.records())
        assert problems == []

        imported = run.tool(
            "import",
            str(customers_csv(run.workdir / "c.csv", 5)),
            "--wait",
            "--wait-timeout",
            "60",
            "--no-progress",
            "--json",
        )
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["succeeded"]["customer"] == 5

        status = run.tool("status", "--json")
        assert status.returncode in (0, 1), status.stderr
        report = json.loads(status.stdout)
        assert report["kafka_error"] is None
        assert [p["lag"] for p in report["partitions"]] == [0] * PARTITIONS

        listed = run.tool("dead-letters", "list", "--json")
        assert listed.returncode in (0, 1), listed.stderr
        assert len(json.loads(listed.stdout)) == STREAM.malformed
        assert await dead_letter_copies(run) == STREAM.malformed
        assert daemon.readyz()[0] == 200
        if mode == "oauth":
            # Sessions end with their token (4 s), so the run needed fresh tokens.
            assert len(secure_kafka.tokens.issued) - tokens_before >= 2


K = "PIVOTAL_SYNC_KAFKA_"
# case: (front mode, setting overrides ("" removes the variable), the variable the reason names)
MISCONFIGURATIONS = {
    "wrong password": ("scram-tls", {f"{K}SASL_PASSWORD": "not-the-password"}, "SASL_PASSWORD"),
    "wrong CA": ("tls", {f"{K}SSL_CA_FILE": "<wrong-ca>"}, "SSL_CA_FILE"),
    "missing client certificate": (
        "mtls",
        {f"{K}SSL_CERT_FILE": "", f"{K}SSL_KEY_FILE": "", f"{K}SSL_KEY_PASSWORD": ""},
        "SSL_CERT_FILE",
    ),
    "mechanism not enabled": (
        "oauth",
        {
            f"{K}SASL_MECHANISM": "SCRAM-SHA-256",
            f"{K}SASL_USERNAME": "sync",
            f"{K}SASL_PASSWORD": "not-the-password",
        },
        "SASL_MECHANISM",
    ),
    "plaintext client, TLS listener": (
        "tls",
        {f"{K}SECURITY_PROTOCOL": "", f"{K}SSL_CA_FILE": ""},
        "SECURITY_PROTOCOL",
    ),
    "wrong Postgres CA": ("tls", {"PIVOTAL_SYNC_DATABASE_SSLROOTCERT": "<wrong-ca>"}, ""),
}


def events_named(daemon: DaemonProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


async def wait_for_reason(daemon: DaemonProcess, wanted: str) -> str:
    """Poll /readyz until it is 503 with a reason containing `wanted`; return the body."""
    deadline = time.monotonic() + REASON_TIMEOUT_SECONDS
    while True:
        assert daemon.alive(), daemon.tail()
        status, body = daemon.readyz()
        if status == 503 and wanted in body:
            return body
        assert time.monotonic() < deadline, f"{status} {body}\n{daemon.tail()}"
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("case", list(MISCONFIGURATIONS))
async def test_a_misconfiguration_is_one_log_line_and_a_readyz_reason(
    secure_run: RunFactory, certificates: Certificates, case: str
) -> None:
    """Each mistake is named on /readyz and logged once, while the daemon keeps retrying."""
    mode, overrides, variable = MISCONFIGURATIONS[case]
    async with secure_run(mode) as run:
        env = dict(run.env)
        for name, value in overrides.items():
            env.pop(name, None)
            if value:
                env[name] = value.replace("<wrong-ca>", str(certificates.wrong_ca_file))
        run.env = env
        daemon = run.start_daemon()
        if variable:
            body = await wait_for_reason(daemon, f"{K}{variable}")
            event = "kafka_unreachable"
        else:
            body = await wait_for_reason(daemon, "PIVOTAL_SYNC_DATABASE_SSLROOTCERT")
            event = "postgres_unreachable"
        # Several retries later: still running, still one line for the one reason.
        await asyncio.sleep(6)
        assert daemon.alive()
        assert len(events_named(daemon, event)) == 1, daemon.tail()
        assert "not-the-password" not in daemon.log_path.read_text()
        assert "not-the-password" not in body


async def test_an_expired_token_that_cannot_be_refreshed_is_a_readyz_reason(
    secure_run: RunFactory, secure_kafka: SecureKafka
) -> None:
    """When the token endpoint starts refusing, the daemon turns unready once its token has
    expired, naming the OAuth client settings, and recovers when tokens are issued again."""
    async with secure_run("oauth") as run:
        daemon = run.start_daemon()
        daemon.wait_ready()
        secure_kafka.tokens.refusing = True
        body = await wait_for_reason(daemon, f"{K}OAUTH_CLIENT_SECRET")
        assert "refused the client credentials" in body
        secure_kafka.tokens.refusing = False
        daemon.wait_ready(timeout=REASON_TIMEOUT_SECONDS)


async def test_the_tools_name_the_setting_to_fix_too(
    secure_run: RunFactory, tmp_path: Path
) -> None:
    """With a wrong SASL password, `import` fails naming it and `status` shows it as Kafka's
    state; the password itself appears nowhere."""
    async with secure_run("scram-tls") as run:
        assert run.tool("migrate").returncode == 0
        run.env = {**run.env, f"{K}SASL_PASSWORD": "not-the-password"}
        imported = run.tool("import", str(customers_csv(tmp_path / "c.csv", 2)), "--no-progress")
        assert imported.returncode != 0
        assert f"refused the SCRAM-SHA-512 login: check {K}SASL_USERNAME" in imported.stderr
        status = run.tool("status", "--json")
        assert f"{K}SASL_PASSWORD" in json.loads(status.stdout)["kafka_error"]
        for output in (imported.stdout, imported.stderr, status.stdout, status.stderr):
            assert "not-the-password" not in output


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({f"{K}SECURITY_PROTOCOL": "SASL_SSL"}, f"{K}SASL_MECHANISM"),
        ({f"{K}SECURITY_PROTOCOL": "SSL", f"{K}SSL_CA_FILE": "/no/such/ca.pem"}, f"{K}SSL_CA_FILE"),
    ],
)
def test_settings_invalid_on_their_face_exit_2_naming_the_variable(
    settings: dict[str, str], variable: str
) -> None:
    """`pivotal-sync run` refuses to start (exit 2) and names the variable; nothing is retried."""
    env = {
        **os.environ,
        "PIVOTAL_API_KEY": KEY,
        "PIVOTAL_SYNC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        **settings,
    }
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"configuration error: {variable}" in done.stderr
