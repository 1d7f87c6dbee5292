"""What every operator command shares: exit codes, time arguments, progress bars, running.

Configuration comes from the same environment as `run` (`load_settings()`); a bad setting is a
ConfigError that `cli.main` turns into exit code 2.

Exit codes: 0 done, 1 done with problems (rejected rows, dead letters, nothing matched,
unreachable dependency), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from daemon.checkpoints import CheckpointStore
    from daemon.config import Settings

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
# A non-terminal (a CI log, a pipe) gets a progress line at most this often.
PROGRESS_LINE_INTERVAL_SECONDS = 5.0
PROGRESS_BAR_WIDTH = 30
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# What every TIME argument accepts, for the help texts (parse_time is the one parser).
TIME_FORMATS = (
    "TIME is an RFC 3339 / ISO 8601 time (2026-11-26T10:00:00Z, 2026-11-26T11:00:00+01:00; "
    "without an offset it is UTC), a date (2026-11-26, midnight UTC), `now`, or an age "
    "before now: a number with s, m, h or d (90s, 15m, 2h, 3d)."
)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 / ISO 8601 time (naive = UTC), a date, `now`, or an age like 15m, 2h, 3d."""
    value = text.strip()
    moment = now or datetime.now(UTC)
    if value == "now":
        return moment
    match = _RELATIVE.match(value)
    if match:
        return moment - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 2026-11-26T10:00:00Z, 2026-11-26, now, or 15m/2h/3d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class ProgressBar:
    """`bar(done, total)`: a bar on a terminal, a line every few seconds elsewhere."""

    def __init__(self, label: str, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = done >= total
        if self.tty:
            if final or now - self._last >= 0.1:
                self._last = now
                self.stream.write("\r" + self.line(done, total))
                self._drawn = True
                if final:
                    self.close()
        elif final or now - self._last >= PROGRESS_LINE_INTERVAL_SECONDS:
            self._last = now
            self.stream.write(self.line(done, total) + "\n")
        self.stream.flush()

    def line(self, done: int, total: int) -> str:
        share = 1.0 if total <= 0 else min(1.0, done / total)
        filled = round(share * PROGRESS_BAR_WIDTH)
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        return f"{self.label:<10} [{bar}] {done}/{total} {share:4.0%}"

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False


def run_command(coroutine: Coroutine[Any, Any, int], *, migrate: Settings | None = None) -> int:
    """Run one command's coroutine; an unreachable dependency is a message, not a traceback.

    With `migrate` (the settings), the daemon's tables are created or upgraded first, exactly as
    `run` does on start (under the migrations' advisory lock), so a tool works on a fresh
    database.
    SIGTERM and SIGINT stop the command cleanly, also as PID 1 (daemon/signals.py).
    """
    import asyncpg  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    from daemon.signals import run_until_signalled  # noqa: PLC0415

    async def main() -> int:
        try:
            if migrate is not None:
                await ensure_tables(migrate)
            return await coroutine
        finally:
            coroutine.close()  # never started when the migration failed: no "never awaited"

    try:
        return run_until_signalled(main())
    except asyncpg.UndefinedTableError:
        error("the daemon's tables do not exist yet: run `pivotal-sync migrate` first")
        return EXIT_PROBLEMS
    except KafkaError as exc:
        error(f"kafka: {_kafka_reason() or f'{type(exc).__name__}: {exc}'}")
        return EXIT_PROBLEMS
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        error(f"{type(exc).__name__}: {exc}{_postgres_reason(exc)}")
        return EXIT_PROBLEMS


def _postgres_reason(exc: BaseException) -> str:
    import ssl  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    from daemon.postgres_access import explain  # noqa: PLC0415

    database = (asyncpg.PostgresError, asyncpg.InterfaceError, ssl.SSLError, ConnectionError)
    return f" ({explain(exc)})" if isinstance(exc, database) else ""


def _kafka_reason() -> str:
    """What the Kafka settings get wrong, found by one connection (aiokafka does not say)."""
    import asyncio  # noqa: PLC0415

    from daemon.kafka_clients import KafkaClients  # noqa: PLC0415

    reason: str = asyncio.run(KafkaClients(settings()).diagnose())
    return reason


async def ensure_tables(config: Settings) -> None:
    """Apply pending migrations (advisory-locked, as `run` does); say so on stderr if any."""
    async with await open_store(config) as store:
        applied = await store.migrate()
    if applied:
        error(f"applied migrations {', '.join(applied)}")


def error(message: str) -> None:
    print(f"pivotal-sync: {message}", file=sys.stderr)


def settings() -> Settings:
    from daemon import redaction  # noqa: PLC0415
    from daemon.config import load_settings  # noqa: PLC0415

    settings = load_settings()
    settings.require_database_url()
    # The tools print what Pivotal and Postgres said: the same secrets as the daemon's go.
    redaction.register_settings(settings)
    return settings


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


async def open_store(config: Settings) -> CheckpointStore:
    """The daemon's tables, for a tool: a small pool (a tool runs one query at a time)."""
    from daemon.checkpoints import CheckpointStore  # noqa: PLC0415 - keeps --help fast

    return await CheckpointStore.connect(config.require_database_url(), max_size=2)
