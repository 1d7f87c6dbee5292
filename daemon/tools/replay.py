"""`pivotal-sync replay`: re-deliver a time slice of the topics through the daemon.

It reads a time slice of each topic the daemon consumes (or of `--topic`) with a group-less
consumer (seek by `offsets_for_times`, read up to the high watermark seen at the start), and
produces again the records whose events are not finished; with `force`, it forgets their
checkpoints first so the daemon applies them again (as PATCHes: the entity map has the ids, so
no create is repeated). Events that carry `sequence` stay protected by stale detection either
way. Records are read with their topic's format (the mapping file, as the daemon reads them)
and go back to the topic they came from.
"""

from __future__ import annotations

import argparse
import math
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError

from daemon.config import Settings
from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef
from daemon.formats.mapping import MappingFile, mapping_for
from daemon.kafka_clients import KafkaClients
from daemon.tools.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    TIME_FORMATS,
    ProgressBar,
    error,
    open_store,
    parse_time,
    print_json,
    run_command,
    settings,
)
from daemon.tools.importing import Outgoing, Progress, produce

REPLAY_HEADER = "pivotal-sync-replay"
REPLAY_FETCH_TIMEOUT_MS = 500
REPLAY_FETCH_MAX_RECORDS = 2000
# A partition that yields nothing for this long is taken as read to its end.
REPLAY_IDLE_SECONDS = 10.0


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


def _event(record: RecordRef, mapping: MappingFile) -> Event | None:
    """The event the daemon makes of this record; None when it makes none (invalid, skipped)."""
    try:
        decoded = mapping.decode(record)
    except InvalidEventError:
        return None
    return decoded if isinstance(decoded, Event) else None


def record_event_id(record: RecordRef, mapping: MappingFile | None = None) -> str | None:
    """The id the daemon files this record under; None when it is not a valid event."""
    event = _event(record, mapping or MappingFile.builtin())
    return event.id if event is not None else None


def _matches(record: RecordRef, entity: str | None, mapping: MappingFile) -> bool:
    if entity is None:
        return True
    if record.key is not None and record.key == entity.encode("utf-8"):
        return True
    event = _event(record, mapping)
    return event is not None and entity in (event.entity.external_id, event.customer_external_id)


def choose(
    records: Sequence[RecordRef],
    finished: set[str],
    *,
    force: bool,
    report: ReplayReport,
    mapping: MappingFile | None = None,
) -> list[tuple[RecordRef, str]]:
    """The records to produce again, with their event ids, in stream order. No I/O."""
    chosen: list[tuple[RecordRef, str]] = []
    seen: set[str] = set()
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        event_id = record_event_id(record, mapping)
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
    kafka: KafkaClients, topic: str, piece: Slice, report: ReplayReport
) -> list[RecordRef]:
    """The records of `topic` in the slice, read with a consumer that joins no group."""
    from aiokafka import TopicPartition  # noqa: PLC0415

    consumer = kafka.consumer(
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
    found.append(RecordRef.of(raw))


async def replay(
    settings: Settings,
    piece: Slice,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    topic: str | None = None,
) -> ReplayReport:
    report = ReplayReport(dry_run=dry_run)
    kafka = KafkaClients(settings)
    mapping = mapping_for(settings.topics, settings.mapping_file)
    records: list[RecordRef] = []
    for name in [topic] if topic is not None else settings.topics:
        records += await read_slice(kafka, name, piece, report)
    records = [r for r in records if _matches(r, piece.entity, mapping)]
    report.matched = len(records)
    async with await open_store(settings) as store:
        ids = [i for i in (record_event_id(r, mapping) for r in records) if i is not None]
        finished = await store.finished_ids(ids)
        chosen = choose(records, finished, force=force, report=report, mapping=mapping)
        report.planned = [
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "event_id": i,
                "finished": i in finished,
            }
            for r, i in chosen
        ]
        if dry_run or not chosen:
            return report
        if force:
            report.forgotten = await store.forget_events([i for _, i in chosen if i in finished])
        # Each record goes back to the topic it came from: that topic's format reads it.
        for name in dict.fromkeys(r.topic for r, _ in chosen):
            produced = await produce(
                kafka,
                name,
                [replay_record(r) for r, _ in chosen if r.topic == name],
                progress,
            )
            report.published += produced.count
    return report


# ---------------------------------------------------------------------------------------------
# The command: arguments, run, render.


def run(args: argparse.Namespace) -> int:
    if args.to is not None and args.to < args.from_:
        error("replay: --to is before --from")
        return EXIT_USAGE
    config = settings()
    piece = Slice(
        start_ms=int(args.from_.timestamp() * 1000),
        end_ms=None if args.to is None else int(args.to.timestamp() * 1000),
        entity=args.entity,
    )

    async def run() -> int:
        bar = ProgressBar("replayed", enabled=not args.json)
        report = await replay(
            config,
            piece,
            force=args.force,
            dry_run=args.dry_run,
            progress=bar,
            topic=args.topic,
        )
        bar.close()
        if args.json:
            print_json(report.__dict__)
        else:
            print(render(report))
        return EXIT_OK if report.matched else EXIT_PROBLEMS

    return run_command(run(), migrate=config)


def render(report: ReplayReport) -> str:
    lines = [
        f"seek              {report.seek}",
        f"records in slice  {report.scanned}",
        f"matching          {report.matched}",
        f"not events        {report.unparseable} (skipped)",
        f"repeated copies   {report.repeated} (skipped)",
        f"already finished  {report.already_finished} (skipped; --force applies them again)",
    ]
    if report.dry_run:
        lines.append(f"would publish     {len(report.planned)}")
    else:
        lines.append(f"checkpoints reset {report.forgotten}")
        lines.append(f"published         {report.published}")
    return "\n".join(lines)


def add_parser(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register `replay`."""
    replay = commands.add_parser(
        "replay",
        help="re-deliver a time slice of the topic (finished events stay skipped)",
        description=textwrap.fill(
            "Publish again the events the topic holds between --from and --to; the running "
            "daemon applies them. Events it already finished are skipped unless --force."
        )
        + "\n\n"
        + textwrap.fill(TIME_FORMATS),
        epilog="examples:\n"
        "  pivotal-sync replay --from 2h --dry-run\n"
        "  pivotal-sync replay --from 2026-11-26T10:00:00Z --to 2026-11-26T11:00:00Z\n"
        "  pivotal-sync replay --from 3d --entity cus_0042 --force",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument(
        "--from",
        dest="from_",
        type=parse_time,
        required=True,
        metavar="TIME",
        help="slice start (see TIME above)",
    )
    replay.add_argument("--to", type=parse_time, metavar="TIME", help="slice end (default: now)")
    replay.add_argument("--entity", metavar="EXTERNAL_ID", help="only this customer or entity")
    replay.add_argument("--topic", help="only this topic (default: every topic consumed)")
    replay.add_argument("--force", action="store_true", help="apply finished events again too")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    replay.add_argument("--json", action="store_true", help="machine-readable report")
    replay.set_defaults(handler=run)
