"""Logging: JSON lines when not on a terminal, and the API key never appears in any line."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from daemon import logs
from daemon.config import LogFormat

KEY = "pivotal_live_very_secret_0042"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure(LogFormat.AUTO, "info", stream=out)
    logs.register_secret(KEY)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_non_terminal_stream_gets_json_lines_with_level_and_timestamp(
    stream: io.StringIO,
) -> None:
    structlog.get_logger().info("event_finished", outcome="sent", offset=3)
    (line,) = lines(stream)
    assert line["event"] == "event_finished"
    assert line["outcome"] == "sent"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_the_key_is_redacted_from_values_nested_values_and_messages(stream: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info("request_sent", authorization=f"Bearer {KEY}", nested={"headers": [KEY]})
    log.info(f"oops {KEY}")
    text = stream.getvalue()
    assert KEY not in text
    assert text.count(logs.REDACTED) == 3


def test_the_key_is_redacted_from_tracebacks(stream: io.StringIO) -> None:
    try:
        raise RuntimeError(f"refused {KEY}")
    except RuntimeError:
        structlog.get_logger().exception("request_failed")
    assert KEY not in stream.getvalue()
    assert "RuntimeError" in stream.getvalue()


def test_stdlib_loggers_such_as_aiokafka_are_redacted_too(stream: io.StringIO) -> None:
    logging.getLogger("aiokafka").warning("connection to %s failed", KEY)
    assert KEY not in stream.getvalue()
    assert "connection to" in stream.getvalue()


def test_a_third_party_message_repeated_during_an_outage_is_logged_once(
    stream: io.StringIO,
) -> None:
    chatty = logging.getLogger("aiokafka.consumer.fetcher")
    for node in range(20):
        chatty.error("Failed fetch messages from %s: NodeNotReadyError", node)
    chatty.error("Heartbeat session expired - marking coordinator dead")
    assert [line["event"] for line in lines(stream)] == [
        "Failed fetch messages from 0: NodeNotReadyError",
        "Heartbeat session expired - marking coordinator dead",
    ]


def test_after_the_interval_the_message_comes_back_with_how_many_were_dropped() -> None:
    now = [0.0]
    repeat = logs.RepeatFilter(interval=30, clock=lambda: now[0])

    def record(node: int) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", logging.ERROR, "f", 1, "lost %s", (node,), None)

    assert repeat.filter(record(1))
    assert not any(repeat.filter(record(n)) for n in range(5))
    now[0] = 31.0
    again = record(9)
    assert repeat.filter(again)
    assert again.getMessage() == "lost 9 [5 more like this dropped]"
