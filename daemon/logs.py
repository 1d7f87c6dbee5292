"""structlog configuration: JSON lines in containers, a readable console on a terminal.

Configured once by the CLI. Every log call goes through `redact_secrets`, which replaces any
registered secret (the API key, the Postgres password) and any echoed HTTP credential wherever
it appears in an event dict (daemon/redaction.py): a key is never logged, even if some
exception message or header dump carried it by accident.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from daemon.config import LogFormat
from daemon.redaction import REDACTED, redact_any, register_secret

__all__ = ["REDACTED", "RepeatFilter", "configure", "redact_secrets", "register_secret"]

# A third-party message repeated within this many seconds is dropped (and counted).
REPEAT_INTERVAL_SECONDS = 30.0


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {key: redact_any(value) for key, value in event_dict.items()}


class RepeatFilter(logging.Filter):
    """One line per message per interval from third-party libraries: during an outage they
    repeat themselves (aiokafka: ~10 error lines a second while a broker is down), which buries
    the daemon's own lines and costs log storage. The next line that gets through says how
    many like it were dropped."""

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))  # the template, not its arguments
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} more like this dropped]"
        self._seen[key] = (now, 0)
        return True


def configure(
    log_format: LogFormat = LogFormat.AUTO, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and route stdlib logging, e.g. aiokafka's, through the same output)."""
    out = stream if stream is not None else sys.stderr
    as_json = log_format is LogFormat.JSON or (log_format is LogFormat.AUTO and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if as_json:
        # format_exc_info renders tracebacks before redaction sees them.
        shared += [structlog.processors.format_exc_info, redact_secrets]
        renderer = structlog.processors.JSONRenderer()
    else:
        shared += [redact_secrets]
        renderer = structlog.dev.ConsoleRenderer()
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries are chatty at INFO; their warnings still come through.
    root.setLevel(max(numeric, logging.WARNING))
