"""Per-partition progress: which Kafka offset is safe to commit. No I/O.

    progress.track(topic, partition, offset)   # handed to the pipeline (in offset order)
    progress.track_many(topic, partition, offsets)  # the same for a fetched batch, at once
    progress.finish(topic, partition, offset)  # its outcome is durable in Postgres
    progress.committable() -> {(topic, partition): position}
    progress.mark_committed(positions)         # after `consumer.commit` succeeded
    progress.forget(partitions)                # on revoke

A Kafka commit position is "the next offset to read": everything below it is done. For a
partition it is the lowest tracked offset not yet finished, or, when all are finished, the last
tracked offset + 1 (offsets may have gaps: compaction, transaction markers). Offsets finish in
any order and are tracked in increasing order.

The daemon holds a backlog of half a million pending events while the API is slow, within a
200 MB RSS budget, so the cost per pending offset matters: a deque of int objects plus a set of
the unfinished ones cost about 74 bytes per offset (37 MB for 500,000). A partition instead
keeps one byte per offset in segments: each a `bytearray` of flags from a `base` offset, 1 for
an offset tracked and unfinished, 0 for one finished or never tracked (a gap is as good as
done). A segment's `head` index points at its first 1, so the position is `base + head` of the
first segment; when the head finishes, the next 1 is found by `bytearray.find` at C speed, and
every flag is scanned once, so `finish` is O(1) amortized (plus a bisection over the segment
bases when there are several). `track_many` appends a batch's flags in one call.

Memory follows progress: once a segment's head is past a threshold and at least half its array,
the finished prefix is deleted (a copy of at most the other half: O(1) amortized); a segment
with nothing unfinished is dropped, and when nothing is unfinished at all the next tracked
offset starts a new segment, so a gap while everything is done costs nothing. A gap tracked
while an offset before it is unfinished is filled with 0s only up to `MAX_GAP` offsets; a
longer one (a compacted topic) starts a new segment instead. Worst case, bounded: a gap costs
at most `MAX_GAP` bytes, or one segment (about 160 bytes) however many offsets it skips.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]

# The finished prefix is dropped once the head is this far in (and past half the array): small
# arrays are not copied over and over, large ones shrink before they double.
COMPACT_AFTER = 4096

# A gap of up to this many offsets behind an unfinished one is filled with 0s (one byte each);
# a longer one starts a new segment.
MAX_GAP = 65_536


@dataclass(slots=True, eq=False)
class _Segment:
    """Flags of the offsets from `base`, at least one of them unfinished."""

    base: int
    # One byte per offset from `base`: 1 = tracked and unfinished, 0 = finished or a gap.
    flags: bytearray
    # The number of 1s in `flags`; a segment left with none is dropped.
    unfinished: int
    # Index of the first 1 in `flags`.
    head: int = 0

    def advance(self) -> None:
        """The head finished: move it to the next unfinished offset (there is one)."""
        head = self.flags.find(1, self.head)
        if head >= COMPACT_AFTER and 2 * head >= len(self.flags):
            del self.flags[:head]
            self.base += head
            head = 0
        self.head = head


def _base(segment: _Segment) -> int:
    return segment.base


@dataclass(slots=True, eq=False)
class _Partition:
    # In offset order, each with at least one unfinished offset; empty when none is.
    segments: deque[_Segment] = field(default_factory=deque)
    # The last tracked offset + 1: the position once everything is finished.
    next_offset: int = 0
    # The last position the caller committed, None before the first commit.
    committed: int | None = None

    def position(self) -> int:
        if self.segments:
            first = self.segments[0]
            return first.base + first.head
        return self.next_offset

    def append(self, first: int, flags: bytes | bytearray, count: int) -> None:
        """Flags of the offsets from `first` (past the last tracked one), `count` of them 1."""
        segments = self.segments
        last = segments[-1] if segments else None
        gap = first - last.base - len(last.flags) if last is not None else 0
        if last is None or gap > MAX_GAP:
            # Nothing is pending just before `first`, or only far before it: a new segment, so
            # the gap costs nothing.
            segments.append(_Segment(first, bytearray(flags), count))
        else:
            if gap:
                last.flags += bytes(gap)
            last.flags += flags
            last.unfinished += count
        self.next_offset = first + len(flags)

    def finish(self, offset: int) -> bool:
        segments = self.segments
        if len(segments) == 1:
            index = 0
        else:
            index = bisect_right(segments, offset, key=_base) - 1
            if index < 0:
                return False
        segment = segments[index]
        flags, at = segment.flags, offset - segment.base
        if not 0 <= at < len(flags) or not flags[at]:
            return False
        flags[at] = 0
        segment.unfinished -= 1
        if not segment.unfinished:
            del segments[index]  # free it now; a gap before the next segment is as good as done
        elif at == segment.head:
            segment.advance()
        return True


class Progress:
    """Tracked and finished offsets per partition; the safe commit position of each."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        """An event of this offset was handed to the pipeline; offsets must increase."""
        state = self._partitions.setdefault((topic, partition), _Partition())
        if offset < state.next_offset:
            # A seek back must `forget` the partition first, or a position could go backwards.
            raise ValueError(f"{topic}[{partition}]: offset {offset} tracked out of order")
        state.append(offset, b"\x01", 1)

    def track_many(self, topic: str, partition: int, offsets: Sequence[int]) -> None:
        """`track` for a fetched batch of one partition: one order check, one append per run."""
        if not offsets:
            return
        state = self._partitions.setdefault((topic, partition), _Partition())
        if offsets[0] < state.next_offset or not all(map(operator.lt, offsets, offsets[1:])):
            raise ValueError(f"{topic}[{partition}]: offsets {offsets[0]}… tracked out of order")
        for first, flags, count in _runs(offsets):
            state.append(first, flags, count)

    def finish(self, topic: str, partition: int, offset: int) -> bool:
        """The outcome of this offset is durable; False when it was not tracked (e.g. revoked)."""
        state = self._partitions.get((topic, partition))
        return state is not None and state.finish(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """The position of every partition that advanced since its last `mark_committed`."""
        positions = {}
        for tp, state in self._partitions.items():
            position = state.position()
            if state.committed is None or position > state.committed:
                positions[tp] = position
        return positions

    def mark_committed(self, positions: Mapping[TopicPartition, int]) -> None:
        """These positions are committed to Kafka (partitions forgotten since are ignored)."""
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = max(position, state.committed or 0)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions: later `finish` calls for them are ignored."""
        for tp in partitions:
            self._partitions.pop(tp, None)

    def pending(self, tp: TopicPartition) -> int:
        """Tracked offsets of the partition not yet finished."""
        state = self._partitions.get(tp)
        return sum(segment.unfinished for segment in state.segments) if state is not None else 0

    @property
    def partitions(self) -> list[TopicPartition]:
        """Partitions tracked since they were last forgotten."""
        return list(self._partitions)


def _runs(offsets: Sequence[int]) -> Iterator[tuple[int, bytes | bytearray, int]]:
    """Increasing offsets as runs with no gap over `MAX_GAP`: first offset, flags, count."""
    if offsets[-1] - offsets[0] + 1 - len(offsets) <= MAX_GAP:
        yield offsets[0], _flags(offsets), len(offsets)  # no gap over it: one run, the usual case
        return
    start = 0
    for i in range(1, len(offsets)):
        if offsets[i] - offsets[i - 1] - 1 > MAX_GAP:
            yield offsets[start], _flags(offsets[start:i]), i - start
            start = i
    yield offsets[start], _flags(offsets[start:]), len(offsets) - start


def _flags(offsets: Sequence[int]) -> bytes | bytearray:
    """The flags of increasing offsets from the first to the last: 1 where tracked."""
    first, span = offsets[0], offsets[-1] - offsets[0] + 1
    if span == len(offsets):
        return b"\x01" * span  # contiguous, the usual case: no per-offset work
    flags = bytearray(span)
    for offset in offsets:
        flags[offset - first] = 1
    return flags
