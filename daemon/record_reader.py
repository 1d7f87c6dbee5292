"""Records read back from Kafka by position: the bytes of events held merged, when needed.

Events merged into a request are held as an id and a position only (daemon/merged_events.py).
When Pivotal refuses that request for good, each of its events becomes a dead letter that must
keep exactly what arrived, so their records are read back here. Kafka still has them: their
offsets are not committed before they are finished. A group-less consumer (it commits nothing
and joins no group) seeks to each wanted offset, skipping what lies between them.

A record missing from the partition is one the topic's retention deleted while it waited. It
comes back as a position with no bytes and the `UNAVAILABLE_HEADER`, so that its dead letter
says so and `dead-letters retry` refuses it instead of publishing an empty value (a tombstone).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from daemon.events import RecordRef
from daemon.kafka_clients import KafkaClients
from daemon.merged_events import Position

FETCH_TIMEOUT_MS = 1000
FETCH_MAX_RECORDS = 500
READ_LIMIT_SECONDS = 30.0
UNAVAILABLE_HEADER = "pivotal-sync-record-unavailable"

log = structlog.get_logger("pivotal_sync.record_reader")


class RecordReader:
    """Reads given records back from the cluster (the daemon's own connection settings)."""

    def __init__(self, kafka: KafkaClients) -> None:
        self._kafka = kafka

    async def read(self, positions: Collection[Position]) -> dict[Position, RecordRef]:
        """The record at each position; raises KafkaError when the cluster cannot be read (the
        caller retries: a dead letter without its bytes is never written for an outage)."""
        wanted: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in positions:
            wanted.setdefault((topic, partition), []).append(offset)
        consumer = self._kafka.consumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        try:
            await consumer.start()
            found: dict[Position, RecordRef] = {}
            for (topic, partition), offsets in wanted.items():
                found.update(await _read_partition(consumer, topic, partition, sorted(offsets)))
            return found
        finally:
            await consumer.stop()


async def _read_partition(
    consumer: Any, topic: str, partition: int, offsets: list[int]
) -> dict[Position, RecordRef]:
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    found: dict[Position, RecordRef] = {}
    remaining = set(offsets)
    gone: list[int] = []
    deadline = time.monotonic() + READ_LIMIT_SECONDS
    while remaining:
        # Straight to the next wanted offset: merged events may lie far apart.
        consumer.seek(tp, min(remaining))
        batch = await consumer.getmany(
            tp, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
        )
        records = batch.get(tp, [])
        if not records:
            # Nothing at or after the wanted offset: either the partition no longer holds it
            # (retention emptied it, the topic was recreated) or the cluster is not answering.
            gone += await _outside_partition(consumer, tp, remaining)
            remaining.difference_update(gone)
            if remaining and time.monotonic() > deadline:
                raise KafkaTimeoutError(f"{topic}[{partition}] returned no records")
            continue
        deadline = time.monotonic() + READ_LIMIT_SECONDS  # it answers: the wait starts again
        for raw in records:
            if raw.offset in remaining:
                remaining.discard(raw.offset)
                found[(topic, partition, raw.offset)] = RecordRef.of(raw)
        # What was skipped over is not in the partition any more (retention, compaction).
        gone += sorted(offset for offset in remaining if offset < records[-1].offset)
        remaining.difference_update(gone)
    for offset in gone:
        found[(topic, partition, offset)] = unavailable((topic, partition, offset))
    if gone:
        log.warning("records_unavailable", topic=topic, partition=partition, count=len(gone))
    return found


async def _outside_partition(consumer: Any, tp: TopicPartition, offsets: set[int]) -> list[int]:
    """The offsets below the partition's first record or at or past its end: gone for good."""
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    return sorted(offset for offset in offsets if offset < begin or offset >= end)


def unavailable(position: Position) -> RecordRef:
    """A record Kafka no longer has: its position, no bytes, and the header that says so."""
    topic, partition, offset = position
    return RecordRef(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None,
        value=None,
        headers=((UNAVAILABLE_HEADER, b"1"),),
    )
