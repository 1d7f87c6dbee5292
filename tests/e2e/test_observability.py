"""What an operator sees of the real daemon: /metrics, /livez, /readyz and the log file.

Every test runs the real `pivotal-sync run` process (no mocks) and checks its endpoints with the
tools that read them in production: promtool, a real Prometheus server, the dashboard's and the
alert rules' own queries. The outages are real too: a revoked key in the sandbox, a Postgres
server stopped and started again with `pg_ctl`, a Kafka address where nothing listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil  # type: ignore[import-untyped]
import pytest
import yaml

from devtools import dashboard
from devtools.local_services import Broker, Postgres, create_database, free_port
from devtools.local_stack import DaemonProcess
from devtools.sample_stream import Message, StreamSpec, expected_state, generate, publish
from tests.deploy.conftest import DEPLOY, REPO, promtool, require_tool
from tests.deploy.metric_names import referenced_metric_names
from tests.e2e.conftest import E2E_KEY, ScenarioFactory

pytestmark = [pytest.mark.e2e]

# Small enough to sync in a few seconds, big enough that every kind of request and outcome
# (creates, updates, deletes, coalescing, dead letters) shows up in the metrics.
SMALL = StreamSpec(customers=12, malformed=3, seed=5)
# The daemon checks Postgres every 5 s (app.DB_CHECK_INTERVAL_SECONDS): two checks and slack.
DB_NOTICE_TIMEOUT_SECONDS = 12.0
CONDITION_TIMEOUT_SECONDS = 20.0
PROMETHEUS_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.25
# Dead-letter reasons the malformed records of a generated stream get (never an HTTP status).
MALFORMED_REASONS = {"invalid_json", "not_cloudevent", "unknown_type", "missing_key"}

T = TypeVar("T")


def small_stream(prefix: str) -> list[Message]:
    return generate(StreamSpec(**{**SMALL.__dict__, "prefix": prefix}))


async def eventually(
    probe: Callable[[], T],
    accept: Callable[[T], bool],
    what: str,
    timeout: float = CONDITION_TIMEOUT_SECONDS,
) -> T:
    """Poll `probe` until `accept` takes its value; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s; last seen {value!r}")
        await asyncio.sleep(POLL_SECONDS)


def scrape(daemon: DaemonProcess) -> str:
    response = httpx.get(f"{daemon.url}/metrics", timeout=5)
    response.raise_for_status()
    return response.text


def livez(daemon: DaemonProcess) -> int:
    return httpx.get(f"{daemon.url}/livez", timeout=5).status_code


def sample_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.strip()]


# --- /metrics ------------------------------------------------------------------------------


@pytest.mark.tools
async def test_metrics_of_a_daemon_that_synced_a_stream_pass_promtool_check_metrics(
    scenario: ScenarioFactory,
) -> None:
    tool = promtool()
    async with scenario() as s:
        await s.publish(small_stream("lint"))
        daemon = s.start_daemon()
        await s.wait_caught_up()
        text = scrape(daemon)
    assert 'pivotal_sync_events_finished_total{kind="customer",outcome="sent"}' in text
    assert "pivotal_sync_api_request_duration_seconds_count" in text
    result = subprocess.run(
        [tool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    # promtool prints one line per lint problem; none is acceptable, errors or not.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.tools
async def test_a_real_prometheus_scrapes_the_daemon_and_answers_with_its_values(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    binary = require_tool(
        "prometheus", "install it with `apt-get install -y prometheus` (Debian/Ubuntu)"
    )
    async with scenario() as s:
        await s.publish(small_stream("prom"))
        daemon = s.start_daemon()
        await s.wait_caught_up()
        with running_prometheus(binary, daemon.port, tmp_path) as prometheus_url:
            # The counters no longer move once caught up: Prometheus must report exactly them.
            expected = finished_by_labels(daemon)
            assert sum(expected.values()) >= len(s.messages)
            seen = await eventually(
                lambda: query(prometheus_url, "pivotal_sync_events_finished_total"),
                lambda seen: seen == expected,
                "Prometheus reports the daemon's pivotal_sync_events_finished_total",
                timeout=PROMETHEUS_TIMEOUT_SECONDS,
            )
    assert seen == expected


async def test_the_ready_gauge_in_a_scrape_is_current_even_if_nobody_asked_readyz(
    scenario: ScenarioFactory,
) -> None:
    async with scenario() as s:
        await s.publish(small_stream("gauge"))
        daemon = s.start_daemon()
        # Waits on the broker's committed offsets only: /readyz is never requested.
        await s.wait_caught_up()
        assert daemon.total("pivotal_sync_ready") == 1
        s.admin.revoke(E2E_KEY)
        await s.publish(small_stream("gauge2"))
        await eventually(
            lambda: daemon.total("pivotal_sync_ready"), lambda v: v == 0, "ready gauge drops to 0"
        )


def finished_by_labels(daemon: DaemonProcess) -> dict[tuple[str, str], float]:
    prefix = "pivotal_sync_events_finished_total{"
    found: dict[tuple[str, str], float] = {}
    for key, value in daemon.metrics().items():
        if key.startswith(prefix):
            labels = dict(part.split("=", 1) for part in key[len(prefix) : -1].split(","))
            found[labels["kind"].strip('"'), labels["outcome"].strip('"')] = value
    return found


def query(prometheus_url: str, promql: str) -> dict[tuple[str, str], float]:
    """An instant query through Prometheus' HTTP API: (kind, outcome) → value."""
    try:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.HTTPError:
        return {}
    body = response.json()
    assert body["status"] == "success", body
    return {
        (r["metric"]["kind"], r["metric"]["outcome"]): float(r["value"][1])
        for r in body["data"]["result"]
    }


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Prometheus answers 503 to queries until its storage is open: wait for /-/ready."""
    deadline = time.monotonic() + PROMETHEUS_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited early:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"prometheus not ready after {PROMETHEUS_TIMEOUT_SECONDS} s")


@contextmanager
def running_prometheus(binary: str, target_port: int, workdir: Path) -> Iterator[str]:
    """A Prometheus server scraping 127.0.0.1:`target_port` every second; stopped by SIGTERM."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "pivotal-sync",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            code = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, f"prometheus exited with {code}:\n{log_path.read_text()[-2000:]}"


async def test_every_metric_the_dashboard_and_alerts_use_is_in_the_live_daemons_metrics(
    scenario: ScenarioFactory,
) -> None:
    referenced = referenced_metric_names(dashboard_exprs() + alert_exprs())
    assert len(referenced) >= 20
    async with scenario() as s:
        await s.publish(small_stream("names"))
        daemon = s.start_daemon()
        await s.wait_caught_up()
        # Per-partition lag series appear with the first lag measurement (every 5 s).
        missing = await eventually(
            lambda: referenced - sample_names(scrape(daemon)),
            lambda missing: not missing,
            "every referenced metric is in /metrics",
        )
    assert missing == set()


def dashboard_exprs() -> list[str]:
    board = json.loads((REPO / dashboard.OUTPUT_PATHS[0]).read_text(encoding="utf-8"))
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition", "query") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(board)
    return found


def alert_exprs() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


# --- /readyz and /livez --------------------------------------------------------------------


async def test_a_revoked_key_makes_readyz_not_ready_until_restored_and_dead_letters_nothing(
    scenario: ScenarioFactory,
) -> None:
    async with scenario() as s:
        daemon = s.start_daemon()
        daemon.wait_ready()
        s.admin.revoke(E2E_KEY)
        expected = await s.publish(small_stream("auth"))
        _, body = await eventually(
            daemon.readyz, lambda r: r[0] == 503, "not ready after the key is revoked"
        )
        assert json.loads(body)["reasons"] == ["paused: Pivotal refused the API key (401)"]
        assert daemon.total("pivotal_sync_paused", reason="auth") == 1
        assert daemon.total("pivotal_sync_ready") == 0
        assert livez(daemon) == 200
        s.admin.restore(E2E_KEY)
        daemon.wait_ready(timeout=CONDITION_TIMEOUT_SECONDS)
        await s.wait_caught_up()
        assert daemon.total("pivotal_sync_paused", reason="auth") == 0
        assert s.problems(expected) == []
        async with await s.store() as store:
            dead = await store.dead_letters(limit=1000)
    # Only the malformed records were parked: nothing because of the 401s.
    assert len(dead) == expected.invalid
    assert {row.dead_letter.reason for row in dead} <= MALFORMED_REASONS
    assert all(row.dead_letter.status is None for row in dead)


async def test_readyz_follows_postgres_going_away_and_coming_back_and_the_stream_finishes(
    scenario: ScenarioFactory,
) -> None:
    await postgres_outage(scenario, publish_during_outage=False)


async def test_records_arriving_while_postgres_is_down_are_finished_once_it_is_back(
    scenario: ScenarioFactory,
) -> None:
    await postgres_outage(scenario, publish_during_outage=True)


async def postgres_outage(scenario: ScenarioFactory, *, publish_during_outage: bool) -> None:
    """Sync half a stream, stop Postgres, check the probes, start it, sync the other half."""
    messages = small_stream("pg")
    half = len(messages) // 2
    with restartable_postgres() as postgres:
        database_url = await create_database(postgres.server.dsn, "observability")
        async with scenario() as s:
            await s.publish(messages[:half])
            daemon = s.start_daemon(DATABASE_URL=database_url)
            await s.wait_caught_up()
            daemon.wait_ready()
            postgres.stop_server()
            await eventually(
                daemon.readyz,
                lambda r: r[0] == 503 and "postgres unreachable" in r[1],
                "readyz reports postgres unreachable",
                timeout=DB_NOTICE_TIMEOUT_SECONDS,
            )
            assert livez(daemon) == 200
            if publish_during_outage:
                await s.publish(messages[half:])
                await asyncio.sleep(2.0)
                assert daemon.alive(), daemon.tail()
                assert livez(daemon) == 200
            postgres.start_server()
            daemon.wait_ready(timeout=DB_NOTICE_TIMEOUT_SECONDS)
            if not publish_during_outage:
                await s.publish(messages[half:])
            await s.wait_caught_up(timeout=60)
            assert daemon.alive()
            assert s.problems(expected_state(s.messages)) == []


class RestartablePostgres:
    """A dedicated embedded server that can be stopped and started in place with `pg_ctl`."""

    def __init__(self, server: Postgres) -> None:
        self.server = server
        # The wheel's PostgresServer: its data dir, socket dir and the system user it runs as.
        embedded: Any = server._server
        self._pgdata: Path = embedded.pgdata
        self._log: Path = embedded.log
        self._user: str | None = embedded.system_user
        self._socket_dir: Path = embedded.get_postmaster_info().socket_dir
        self._pg_ctl = str(Path(psutil.Process(server.pid).exe()).with_name("pg_ctl"))
        self.running = True

    def _pg_ctl_run(self, *args: str) -> None:
        subprocess.run(
            [self._pg_ctl, "-D", str(self._pgdata), "-w", *args],
            user=self._user,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def stop_server(self) -> None:
        self._pg_ctl_run("-m", "fast", "stop")
        self.running = False

    def start_server(self) -> None:
        # The options the wheel started it with: no TCP, the same socket dir, the same log.
        self._pg_ctl_run(
            "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(self._log), "start"
        )
        self.running = True


@contextmanager
def restartable_postgres() -> Iterator[RestartablePostgres]:
    server = Postgres.launch()
    postgres = RestartablePostgres(server)
    try:
        yield postgres
    finally:
        # After a restart the wheel's idea of the postmaster pid is stale: stop it ourselves.
        if postgres.running:
            postgres.stop_server()
        server.stop()


async def test_livez_answers_while_kafka_is_unreachable_and_readyz_says_why(
    scenario: ScenarioFactory,
) -> None:
    async with scenario() as s:
        nowhere = f"127.0.0.1:{free_port()}"
        daemon = s.start_daemon(KAFKA_BOOTSTRAP_SERVERS=nowhere)
        await eventually(lambda: safe_livez(daemon), lambda code: code == 200, "livez is 200")
        _, body = await eventually(
            daemon.readyz,
            lambda r: r[0] == 503 and "PIVOTAL_SYNC_KAFKA_" in r[1],
            "readyz reports kafka not connected, and why",
        )
        reasons = json.loads(body)["reasons"]
        assert reasons[0] == "starting"
        # The reason goes on to name the address and a setting to check. Usually "cannot
        # connect"; a client retrying a closed loopback port can connect to itself (TCP
        # simultaneous open), which then reads as a listener that does not speak Kafka.
        assert reasons[1].startswith("kafka not connected: ")
        assert nowhere in reasons[1]
        assert "PIVOTAL_SYNC_KAFKA_" in reasons[1]
        assert len(reasons) == 2
        await asyncio.sleep(2.0)
        assert daemon.alive()
        assert livez(daemon) == 200


async def test_kafka_going_away_mid_run_makes_readyz_say_so_and_sigterm_still_exits_cleanly(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    async with scenario() as s:
        # A broker of its own, to stop under the running daemon.
        (tmp_path / "own-broker").mkdir()
        with Broker.start(log_dir=tmp_path / "own-broker") as broker:
            await broker.create_topic(s.topic, partitions=3)
            await publish(broker.bootstrap_servers, s.topic, small_stream("gone"))
            daemon = s.start_daemon(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers)
            await eventually(daemon.readyz, lambda r: r[0] == 200, "readyz is ready")
            broker.stop()
            _, body = await eventually(
                daemon.readyz,
                lambda r: r[0] == 503 and "kafka not connected" in r[1],
                "readyz reports kafka not connected",
                timeout=30,
            )
            [reason] = json.loads(body)["reasons"]
            assert reason.startswith("kafka not connected")
            assert daemon.alive()
            assert livez(daemon) == 200
            # SIGTERM with the broker gone: the final commit cannot happen (the events are
            # redelivered and skipped by checkpoint), but the exit is clean and prompt.
            started = time.monotonic()
            assert daemon.stop(timeout=30) == 0
            assert time.monotonic() - started < 20
            assert "Traceback" not in (s.workdir / "daemon-0.log").read_text()


def safe_livez(daemon: DaemonProcess) -> int:
    try:
        return livez(daemon)
    except httpx.HTTPError:
        return 0


# --- logs ----------------------------------------------------------------------------------


async def test_the_log_accounts_for_every_event_once_and_never_prints_the_api_key(
    scenario: ScenarioFactory,
) -> None:
    async with scenario() as s:
        await s.publish(small_stream("logs"))
        daemon = s.start_daemon()
        await s.wait_caught_up()
        # A refused key makes the daemon log about the key: it must still never print it.
        s.admin.revoke(E2E_KEY)
        await s.publish(small_stream(f"logs2{uuid.uuid4().hex[:4]}"))
        await eventually(lambda: daemon.readyz()[0], lambda c: c == 503, "paused by the 401")
        s.admin.restore(E2E_KEY)
        await s.wait_caught_up()
        metrics_text = scrape(daemon)
        assert daemon.stop() == 0
    text = daemon.log_path.read_text()
    assert E2E_KEY not in text
    assert E2E_KEY not in metrics_text
    lines = log_lines(daemon)  # every line is JSON
    # A line per event that cost a request or was parked; the others (coalesced, stale, …)
    # are counted in summaries: together, every event exactly once.
    finished = [line for line in lines if line["event"] == "event_finished"]
    positions = [(line["partition"], line["offset"]) for line in finished]
    published = {(p, offset) for p, end in s.ends.items() for offset in range(end)}
    summaries = [line for line in lines if line["event"] == "events_finished_summary"]
    quiet = sum(line["events"] for line in summaries)
    assert len(positions) == len(set(positions))
    assert set(positions) <= published
    assert len(positions) + quiet == len(s.messages)
    assert {line["outcome"] for line in finished} <= {"sent", "dead_lettered"}
    assert all(sum(line["outcomes"].values()) == line["events"] for line in summaries)
