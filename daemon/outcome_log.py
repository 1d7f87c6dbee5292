"""How finished events are reported: a metric for every one, a log line for those that matter.

    outcome_log = OutcomeLog(metrics)
    outcome_log.finished(items)   # a batch of finished events: metrics, lines, counts
    outcome_log.summarize()       # log what was counted since the last summary (at shutdown)

An event that cost a request of its own (`sent`) or was parked (`dead_lettered`) gets an
`event_finished` line, at info (warning when dead-lettered). The others cost no request of
their own (`duplicate`, `stale`, `coalesced`, `superseded`, `noop`): they are the bulk of a
re-read or a backfill, hundreds of thousands a minute, and a JSON line each cost more than
everything else the daemon does for them (40 % of a re-read's CPU, docs/benchmarks.md). They
get their `event_finished` line at debug level only, and are counted into one
`events_finished_summary` line at info at most every `SUMMARY_INTERVAL_SECONDS` and at
shutdown. The metrics count every event, one increment per (outcome, kind) per batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from daemon.metrics import Metrics
from daemon.outcomes import Finished, Outcome

SUMMARY_INTERVAL_SECONDS = 10.0
# Outcomes that cost no request of their own: counted, logged per event at debug level only.
QUIET_OUTCOMES = frozenset(
    {Outcome.DUPLICATE, Outcome.STALE, Outcome.COALESCED, Outcome.SUPERSEDED, Outcome.NOOP}
)
UNKNOWN_KIND = "unknown"  # the `kind` label of a record that never became an event

log = structlog.get_logger("pivotal_sync.recorder")


class OutcomeLog:
    """Metrics and log lines for finished events, and the running counts of the quiet ones."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_seconds: float = SUMMARY_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._interval = interval_seconds
        self._clock = clock
        self._quiet: Counter[str] = Counter()
        self._since = clock()

    def finished(self, items: Sequence[Finished]) -> None:
        """Count a batch in the metrics; a line for each loud one, a count for each quiet one."""
        by_label: Counter[tuple[Outcome, str]] = Counter(
            (item.outcome, item.entity.kind.value if item.entity else UNKNOWN_KIND)
            for item in items
        )
        quiet = 0
        for (outcome, kind), count in by_label.items():
            self._metrics.events_finished.labels(outcome=outcome.value, kind=kind).inc(count)
            if outcome in QUIET_OUTCOMES:
                self._quiet[outcome.value] += count
                quiet += count
        if quiet < len(items):
            for item in items:
                if item.outcome not in QUIET_OUTCOMES:
                    self._log(item)
        # Asked once per batch, and only when it matters: through structlog's lazy proxy even
        # a disabled debug call costs a logger bind.
        if quiet and log.is_enabled_for(logging.DEBUG):
            for item in items:
                if item.outcome in QUIET_OUTCOMES:
                    log.debug("event_finished", **_fields(item))
        if self._clock() - self._since >= self._interval:
            self.summarize()

    def summarize(self) -> None:
        """Log the quiet events counted since the last summary (nothing when there were none)."""
        now = self._clock()
        if self._quiet:
            log.info(
                "events_finished_summary",
                events=sum(self._quiet.values()),
                outcomes=dict(sorted(self._quiet.items())),
                seconds=round(now - self._since, 1),
            )
            self._quiet.clear()
        self._since = now

    def _log(self, item: Finished) -> None:
        fields = _fields(item)
        if item.dead_letter is None:
            log.info("event_finished", **fields)
            return
        self._metrics.dead_letters.labels(reason=item.dead_letter.reason).inc()
        fields["reason"] = item.dead_letter.reason
        fields["detail"] = item.dead_letter.detail[:300]
        if item.dead_letter.status is not None:
            fields["status"] = item.dead_letter.status
        log.warning("event_finished", **fields)


def _fields(item: Finished) -> dict[str, object]:
    fields: dict[str, object] = {
        "event_id": item.event_id,
        "outcome": item.outcome.value,
        "partition": item.record.partition,
        "offset": item.record.offset,
    }
    if item.entity is not None:
        fields["entity"] = str(item.entity)
    if item.pivotal_id is not None:
        fields["pivotal_id"] = item.pivotal_id
    return fields
