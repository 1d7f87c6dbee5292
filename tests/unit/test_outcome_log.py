"""The outcome log: every event counted, a line for those that cost a request or were parked."""

from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture

from daemon.events import EntityKey, EntityKind, RecordRef
from daemon.metrics import Metrics
from daemon.outcome_log import OutcomeLog
from daemon.outcomes import DeadLetter, Finished, Outcome

CUSTOMER = EntityKey(kind=EntityKind.CUSTOMER, external_id="c1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger("info"),
    )
    yield capture
    structlog.reset_defaults()


def finished(offset: int, outcome: Outcome, *, parked: bool = False) -> Finished:
    return Finished(
        event_id=f"e{offset}",
        record=RecordRef(topic="t", partition=1, offset=offset, key=None, value=b"{}"),
        outcome=outcome,
        entity=None if parked else CUSTOMER,
        dead_letter=DeadLetter(reason="invalid_json", detail="nope") if parked else None,
    )


def count(metrics: Metrics, outcome: str, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "pivotal_sync_events_finished_total", {"outcome": outcome, "kind": kind}
    )
    return value or 0.0


def test_sent_and_dead_lettered_events_get_a_line_each_and_quiet_ones_none(
    captured: LogCapture,
) -> None:
    """A sent event logs at info, a dead letter at warning; a duplicate has no line of its own."""
    outcome_log = OutcomeLog(Metrics(), clock=Clock())
    outcome_log.finished(
        [
            finished(1, Outcome.SENT),
            finished(2, Outcome.DUPLICATE),
            finished(3, Outcome.DEAD_LETTERED, parked=True),
        ]
    )
    lines = [(e["event"], e["log_level"], e["offset"]) for e in captured.entries]
    assert lines == [("event_finished", "info", 1), ("event_finished", "warning", 3)]
    assert captured.entries[1]["reason"] == "invalid_json"


def test_every_event_is_counted_in_the_metrics_whatever_its_outcome() -> None:
    """The finished counter rises by the batch's count per outcome and kind."""
    metrics = Metrics()
    outcome_log = OutcomeLog(metrics, clock=Clock())
    outcome_log.finished([finished(i, Outcome.DUPLICATE) for i in range(5)])
    outcome_log.finished([finished(9, Outcome.STALE), finished(10, Outcome.SENT)])
    outcome_log.finished([finished(11, Outcome.DEAD_LETTERED, parked=True)])
    assert count(metrics, "duplicate", "customer") == 5
    assert count(metrics, "stale", "customer") == 1
    assert count(metrics, "sent", "customer") == 1
    assert count(metrics, "dead_lettered", "unknown") == 1
    reason = {"reason": "invalid_json"}
    assert metrics.registry.get_sample_value("pivotal_sync_dead_letters_total", reason) == 1


def test_quiet_events_are_summarized_once_per_interval_and_at_the_end(
    captured: LogCapture,
) -> None:
    """Counts by outcome come in one line when the interval has passed, and on summarize()."""
    clock = Clock()
    outcome_log = OutcomeLog(Metrics(), interval_seconds=10, clock=clock)
    outcome_log.finished([finished(i, Outcome.DUPLICATE) for i in range(3)])
    assert captured.entries == []
    clock.now = 10.0
    outcome_log.finished([finished(3, Outcome.STALE), finished(4, Outcome.COALESCED)])
    clock.now = 12.5
    outcome_log.finished([finished(5, Outcome.DUPLICATE)])
    outcome_log.summarize()
    outcome_log.summarize()  # nothing new: no line
    summaries = [(e["events"], e["outcomes"], e["seconds"]) for e in captured.entries]
    assert summaries == [
        (5, {"coalesced": 1, "duplicate": 3, "stale": 1}, 10.0),
        (1, {"duplicate": 1}, 2.5),
    ]


def test_with_debug_enabled_every_quiet_event_has_its_own_line(captured: LogCapture) -> None:
    """At debug level the log again has one event_finished line per event."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger("debug"))
    outcome_log = OutcomeLog(Metrics(), clock=Clock())
    outcome_log.finished([finished(1, Outcome.DUPLICATE), finished(2, Outcome.SUPERSEDED)])
    assert [(e["event"], e["log_level"], e["offset"]) for e in captured.entries] == [
        ("event_finished", "debug", 1),
        ("event_finished", "debug", 2),
    ]
