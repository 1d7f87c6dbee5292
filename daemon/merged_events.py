"""Events merged into a request, held as little as finishing them needs: an id and a position.

A coalescing backlog (a CDC backfill carries dozens of updates per record) holds most of its
events merged into a waiting request. Their fields are in the request's body already; what is
left to do with each is to finish it: a checkpoint row (its id) and the release of its offset
(its position). Held whole — the `Event`, its fields, its record's bytes — one costs ~1 KB;
held here, 16 bytes beside its id string (which the admitted set shares), so a 500,000-event
backlog fits in memory and coalesces fully instead of pausing the consumer at one event per
entity.

The bytes are not lost: an event's offset is not committed before it is finished, so Kafka
still has its record, unless retention or compaction removed it meanwhile (on a compacted topic
the older records of a key are exactly what compaction removes). The one path that needs them,
dead-lettering a refused request (a dead-letter row keeps exactly what arrived), reads them back
(daemon/record_reader.py), and says so in the dead letter when they are gone.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from daemon.events import RecordRef

# (topic, partition, offset): where a record is in Kafka.
Position = tuple[str, int, int]


class MergedEvents:
    """Ids and positions of merged events, per partition, in the order they were added."""

    __slots__ = ("_partitions",)

    def __init__(self) -> None:
        self._partitions: dict[tuple[str, int], tuple[list[str], array[int]]] = {}

    def add(self, event_id: str, record: RecordRef) -> None:
        ids, offsets = self._of(record.topic, record.partition)
        ids.append(event_id)
        offsets.append(record.offset)

    def extend(self, other: MergedEvents) -> None:
        for (topic, partition), (ids, offsets) in other._partitions.items():
            mine, positions = self._of(topic, partition)
            mine.extend(ids)
            positions.extend(offsets)

    def __len__(self) -> int:
        return sum(len(ids) for ids, _ in self._partitions.values())

    def __iter__(self) -> Iterator[tuple[str, Position]]:
        """(event id, position) of every event held."""
        for (topic, partition), (ids, offsets) in self._partitions.items():
            for event_id, offset in zip(ids, offsets, strict=True):
                yield event_id, (topic, partition, offset)

    def ids(self) -> list[str]:
        return [event_id for ids, _ in self._partitions.values() for event_id in ids]

    def partitions(self) -> set[tuple[str, int]]:
        return set(self._partitions)

    def _of(self, topic: str, partition: int) -> tuple[list[str], array[int]]:
        held = self._partitions.get((topic, partition))
        if held is None:
            held = self._partitions[(topic, partition)] = ([], array("q"))
        return held


def position_only(position: Position) -> RecordRef:
    """A record reference for a finished merged event: its checkpoint row and its offset's
    release need the position only. Never for a dead letter (that needs the bytes)."""
    topic, partition, offset = position
    return RecordRef(topic=topic, partition=partition, offset=offset, key=None, value=None)
