"""Sending events through the pipeline again: dead-letter redrive and stream replay.

Neither goes around the daemon. Both put records back on the topic the daemon consumes, so a
second attempt is paced by the same limiter, ordered in the same lane, coalesced, checkpointed
and dead-lettered like the first; the tool only decides *what* goes back.

Redrive (`pivotal-sync dead-letters retry`), per dead letter, in the order that keeps the loop
guard atomic and the daemon from skipping the copy:

    1. claim it: `mark_dead_letters_retried` stamps only rows redriven fewer than MAX_REDRIVES
       times, in one UPDATE — two operators retrying at once cannot both send it;
    2. forget its checkpoint row (`forget_events`), or the daemon would skip the copy as done;
    3. produce the original record (key, value, headers) plus `pivotal-sync-redrive: N`.

Replay (`pivotal-sync replay`) reads a time slice of the topic with a group-less consumer
(seek by `offsets_for_times`, read up to the high watermark seen at the start), and produces
again the records whose events are not finished; with `force`, it forgets their checkpoints
first so the daemon applies them again (as PATCHes: the entity map has the ids, so no create is
repeated). Events that carry `sequence` stay protected by stale detection either way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka.errors import KafkaError

from daemon.backfill import Outgoing, Progress, produce
from daemon.checkpoints import MAX_REDRIVES, DeadLetterRow
from daemon.config import Settings
from daemon.errors import InvalidEventError
from daemon.events import RecordRef, parse_record
from daemon.status import EventOutcome, Tables

REDRIVE_HEADER = "pivotal-sync-redrive"
REPLAY_HEADER = "pivotal-sync-replay"
# Upper bound on the rows one `retry`/`purge --all` looks at (they page through newest first).
MAX_ROWS = 100_000
REPLAY_FETCH_TIMEOUT_MS = 500
REPLAY_FETCH_MAX_RECORDS = 2000
# A partition that yields nothing for this long is taken as read to its end.
REPLAY_IDLE_SECONDS = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Filters:
    """Which dead letters an operator means (None = any)."""

    reason: str | None = None
    status: int | None = None  # the HTTP status Pivotal answered
    entity: str | None = None  # an external id, of any kind
    since: datetime | None = None  # dead-lettered (last) at or after
    state: str | None = None  # open, retrying or resolved (see `state_of`)
    limit: int = 100

    @property
    def any(self) -> bool:
        fields = (self.reason, self.status, self.entity, self.since, self.state)
        return any(value is not None for value in fields)


@dataclass(frozen=True, kw_only=True, slots=True)
class Letter:
    """A dead letter and where it stands now."""

    row: DeadLetterRow
    state: str


def state_of(outcome: EventOutcome | None) -> str:
    """open: the event's last outcome is the dead letter; retrying: redriven and not finished
    yet (its checkpoint was forgotten); resolved: a redrive or a later copy succeeded."""
    if outcome is None:
        return "retrying"
    return "open" if outcome.outcome == "dead_lettered" else "resolved"


async def letters(tables: Tables, filters: Filters, ids: Sequence[int] = ()) -> list[Letter]:
    """The dead letters named by `ids`, or else matching `filters`, newest first."""
    if ids:
        found = [await tables.store.dead_letter(i) for i in ids]
        rows = [row for row in found if row is not None]
    else:
        # The state filter is applied here, after the query: fetch generously.
        limit = MAX_ROWS if filters.state else filters.limit
        rows = await tables.store.dead_letters(
            reason=filters.reason,
            status=filters.status,
            entity=filters.entity,
            since=filters.since,
            limit=limit,
        )
    outcomes = await tables.outcomes([row.event_id for row in rows])
    result = [Letter(row=row, state=state_of(outcomes.get(row.event_id))) for row in rows]
    if filters.state is not None:
        result = [letter for letter in result if letter.state == filters.state]
    return result if ids else result[: filters.limit]


# ---------------------------------------------------------------------------------------------
# Retry.


@dataclass
class RetryPlan:
    send: list[DeadLetterRow] = field(default_factory=list)
    skipped: list[tuple[DeadLetterRow, str]] = field(default_factory=list)


def plan_retry(candidates: Sequence[Letter], max_redrives: int = MAX_REDRIVES) -> RetryPlan:
    """Which dead letters may go back, and why the others may not. No I/O."""
    plan = RetryPlan()
    for letter in candidates:
        row = letter.row
        if letter.state == "resolved":
            plan.skipped.append((row, "already succeeded"))
        elif letter.state == "retrying":
            plan.skipped.append((row, "a redrive is still in flight"))
        elif row.event_id.startswith("record:"):
            # Never parsed: the same bytes would fail the same way, under a new id each time.
            plan.skipped.append((row, "not a valid event; fix the producer and publish it again"))
        elif row.retry_count >= max_redrives:
            plan.skipped.append((row, f"redriven {row.retry_count} times already (the limit)"))
        else:
            plan.send.append(row)
    # Original order: one entity's dead letters must reach its lane in the order they arrived.
    plan.send.sort(key=lambda r: (r.record.partition, r.record.offset, r.id))
    return plan


def redrive_record(row: DeadLetterRow, attempt: int) -> Outgoing:
    """The original record again, marked as redrive number `attempt`."""
    headers = tuple(h for h in row.record.headers if h[0] != REDRIVE_HEADER)
    return Outgoing(
        key=row.record.key,
        value=row.record.value,
        headers=(*headers, (REDRIVE_HEADER, str(attempt).encode())),
    )


@dataclass
class RetryResult:
    sent: list[DeadLetterRow] = field(default_factory=list)
    # Claimed by someone else or at the limit by the time we tried (the guard said no).
    refused: list[DeadLetterRow] = field(default_factory=list)


async def retry(
    settings: Settings,
    tables: Tables,
    plan: RetryPlan,
    *,
    max_redrives: int = MAX_REDRIVES,
    progress: Progress | None = None,
) -> RetryResult:
    """Claim, forget, produce (see the module docstring for why in this order)."""
    result = RetryResult()
    if not plan.send:
        return result
    claimed = set(
        await tables.store.mark_dead_letters_retried(
            [row.id for row in plan.send], max_redrives=max_redrives
        )
    )
    result.sent = [row for row in plan.send if row.id in claimed]
    result.refused = [row for row in plan.send if row.id not in claimed]
    if result.sent:
        await tables.store.forget_events([row.event_id for row in result.sent])
        records = [redrive_record(row, row.retry_count + 1) for row in result.sent]
        await produce(settings.kafka_bootstrap_servers, settings.kafka_topic, records, progress)
    return result


async def purge(
    tables: Tables, filters: Filters, ids: Sequence[int] = (), *, everything: bool = False
) -> int:
    """Delete dead letters by ids and/or filters, or all of them; return how many."""
    if filters.state is not None or everything:
        # The store filters by columns only; states (and "all") are resolved to ids here.
        wide = dataclasses.replace(filters, limit=MAX_ROWS)
        chosen = await letters(tables, wide, ids)
        if not chosen:
            return 0
        return await tables.store.delete_dead_letters([letter.row.id for letter in chosen])
    if not ids and not filters.any:
        raise ValueError("purge needs ids or a filter (or everything=True)")
    return await tables.store.delete_dead_letters(
        list(ids) or None,
        reason=filters.reason,
        status=filters.status,
        entity=filters.entity,
        since=filters.since,
    )


# ---------------------------------------------------------------------------------------------
# Replay.


@dataclass(frozen=True, kw_only=True, slots=True)
class Slice:
    """Records whose timestamp is in [start, end] (epoch ms), optionally of one entity."""

    start_ms: int
    end_ms: int | None = None
    entity: str | None = None


@dataclass
class ReplayReport:
    scanned: int = 0  # records read in the time range
    matched: int = 0  # of those, the entity's (all when no entity was given)
    unparseable: int = 0  # never events: skipped (they can only be dead-lettered again)
    repeated: int = 0  # copies of an event already in the slice (an earlier replay, a re-run)
    already_finished: int = 0  # skipped: the daemon finished them (without force)
    forgotten: int = 0  # checkpoints deleted so the daemon applies them again (force)
    published: int = 0
    seek: str = "offsets_for_times"
    dry_run: bool = False
    planned: list[dict[str, Any]] = field(default_factory=list)


def record_event_id(record: RecordRef) -> str | None:
    """The id the daemon files this record under; None when it is not a valid event."""
    try:
        return parse_record(record).id
    except InvalidEventError:
        return None


def _matches(record: RecordRef, entity: str | None) -> bool:
    if entity is None:
        return True
    if record.key is not None and record.key == entity.encode("utf-8"):
        return True
    try:
        return parse_record(record).entity.external_id == entity
    except InvalidEventError:
        return False


def choose(
    records: Sequence[RecordRef], finished: set[str], *, force: bool, report: ReplayReport
) -> list[tuple[RecordRef, str]]:
    """The records to produce again, with their event ids, in stream order. No I/O."""
    chosen: list[tuple[RecordRef, str]] = []
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event_id = record_event_id(record)
        if event_id is None:
            report.unparseable += 1
        elif event_id in seen:
            report.repeated += 1
        elif event_id in finished and not force:
            seen.add(event_id)
            report.already_finished += 1
        else:
            seen.add(event_id)
            chosen.append((record, event_id))
    return chosen


def replay_record(record: RecordRef) -> Outgoing:
    headers = tuple(h for h in record.headers if h[0] != REPLAY_HEADER)
    origin = f"{record.topic}:{record.partition}:{record.offset}".encode()
    return Outgoing(key=record.key, value=record.value, headers=(*headers, (REPLAY_HEADER, origin)))


async def read_slice(
    bootstrap_servers: str, topic: str, piece: Slice, report: ReplayReport
) -> list[RecordRef]:
    """The records of `topic` in the slice, read with a consumer that joins no group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="pivotal-sync-replay",
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        starts = await _seek(consumer, partitions, piece.start_ms, report)
        ends = await _end_bounds(consumer, partitions, piece.end_ms)
        return await _read(consumer, starts, ends, piece, report)
    finally:
        await consumer.stop()


async def _offsets_at(consumer: Any, partitions: list[Any], ms: int) -> dict[Any, int | None]:
    """First offset with a timestamp ≥ ms per partition; None when there is none.

    Real Kafka answers None for "no such record"; tansu answers offset 0 with timestamp -1.
    """
    answer = await consumer.offsets_for_times({tp: ms for tp in partitions})
    return {
        tp: (None if found is None or found.timestamp < 0 else found.offset)
        for tp, found in answer.items()
    }


async def _seek(
    consumer: Any, partitions: list[Any], start_ms: int, report: ReplayReport
) -> dict[Any, int]:
    try:
        offsets = await _offsets_at(consumer, partitions, start_ms)
    except KafkaError:  # a broker without timestamp lookup: read it all, filter by time
        report.seek = "beginning (the broker cannot look offsets up by time)"
        await consumer.seek_to_beginning(*partitions)
        return {tp: await consumer.position(tp) for tp in partitions}
    starts = {}
    for tp, offset in offsets.items():
        if offset is not None:
            consumer.seek(tp, offset)
            starts[tp] = offset
    return starts


async def _end_bounds(consumer: Any, partitions: list[Any], end_ms: int | None) -> dict[Any, float]:
    if end_ms is None:
        return {tp: math.inf for tp in partitions}
    try:
        offsets = await _offsets_at(consumer, partitions, end_ms + 1)
    except KafkaError:  # no lookup: filter by timestamp while reading
        return {tp: math.inf for tp in partitions}
    return {tp: math.inf if offset is None else offset for tp, offset in offsets.items()}


async def _read(
    consumer: Any,
    starts: dict[Any, int],
    ends: dict[Any, float],
    piece: Slice,
    report: ReplayReport,
) -> list[RecordRef]:
    # The high watermark seen at the first fetch bounds each partition: records produced while
    # we read (by the daemon's CRM, or by this very replay) are not part of the slice.
    active = {tp for tp in starts if starts[tp] < ends[tp]}
    bounds: dict[Any, float] = {}
    found: list[RecordRef] = []
    idle_since = time.monotonic()
    while active:
        batches = await consumer.getmany(
            *active, timeout_ms=REPLAY_FETCH_TIMEOUT_MS, max_records=REPLAY_FETCH_MAX_RECORDS
        )
        for tp in active:
            high = consumer.highwater(tp)
            if high is not None:
                bounds.setdefault(tp, min(float(high), ends[tp]))
        for tp, records in batches.items():
            for raw in records:
                if raw.offset < bounds.get(tp, ends[tp]):
                    _collect(raw, piece, report, found)
        if batches:
            idle_since = time.monotonic()
        for tp in list(active):
            if tp in bounds and await consumer.position(tp) >= bounds[tp]:
                active.discard(tp)
        if active and time.monotonic() - idle_since > REPLAY_IDLE_SECONDS:
            break
    return found


def _collect(raw: Any, piece: Slice, report: ReplayReport, found: list[RecordRef]) -> None:
    timestamp = raw.timestamp
    if timestamp < piece.start_ms or (piece.end_ms is not None and timestamp > piece.end_ms):
        return
    report.scanned += 1
    record = RecordRef(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key,
        value=raw.value,
        headers=tuple((str(k), bytes(v or b"")) for k, v in (raw.headers or ())),
        timestamp_ms=timestamp,
    )
    if _matches(record, piece.entity):
        report.matched += 1
        found.append(record)


async def replay(
    settings: Settings,
    piece: Slice,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ReplayReport:
    report = ReplayReport(dry_run=dry_run)
    records = await read_slice(
        settings.kafka_bootstrap_servers, settings.kafka_topic, piece, report
    )
    async with await Tables.connect(settings.require_database_url()) as tables:
        ids = [i for i in (record_event_id(r) for r in records) if i is not None]
        finished = await tables.finished_ids(ids)
        chosen = choose(records, finished, force=force, report=report)
        report.planned = [
            {"partition": r.partition, "offset": r.offset, "event_id": i, "finished": i in finished}
            for r, i in chosen
        ]
        if dry_run or not chosen:
            return report
        if force:
            report.forgotten = await tables.store.forget_events(
                [i for _, i in chosen if i in finished]
            )
        report.published = await produce(
            settings.kafka_bootstrap_servers,
            settings.kafka_topic,
            [replay_record(r) for r, _ in chosen],
            progress,
        )
    return report
