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
any order; they are tracked in increasing order, so each partition keeps a deque of tracked
offsets (the head is the candidate position) and a set of the unfinished ones: `track` and
`finish` are O(1), and the head is popped lazily, O(1) amortized.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(slots=True, eq=False)
class _Partition:
    # Tracked offsets in increasing order, from the lowest that may still be unfinished.
    tracked: deque[int] = field(default_factory=deque)
    unfinished: set[int] = field(default_factory=set)
    # The last tracked offset + 1: the position once everything is finished.
    next_offset: int = 0
    # The last position the caller committed, None before the first commit.
    committed: int | None = None

    def position(self) -> int:
        while self.tracked and self.tracked[0] not in self.unfinished:
            self.tracked.popleft()
        return self.tracked[0] if self.tracked else self.next_offset


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
        state.tracked.append(offset)
        state.unfinished.add(offset)
        state.next_offset = offset + 1

    def track_many(self, topic: str, partition: int, offsets: Sequence[int]) -> None:
        """`track` for a fetched batch of one partition: C-speed appends, one order check."""
        if not offsets:
            return
        state = self._partitions.setdefault((topic, partition), _Partition())
        if offsets[0] < state.next_offset or not all(map(operator.lt, offsets, offsets[1:])):
            raise ValueError(f"{topic}[{partition}]: offsets {offsets[0]}… tracked out of order")
        state.tracked.extend(offsets)
        state.unfinished.update(offsets)
        state.next_offset = offsets[-1] + 1

    def finish(self, topic: str, partition: int, offset: int) -> bool:
        """The outcome of this offset is durable; False when it was not tracked (e.g. revoked)."""
        state = self._partitions.get((topic, partition))
        if state is None or offset not in state.unfinished:
            return False
        state.unfinished.remove(offset)
        if state.tracked[0] == offset:
            state.position()  # pop the finished head now, so memory follows progress
        return True

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
        return len(state.unfinished) if state is not None else 0

    @property
    def partitions(self) -> list[TopicPartition]:
        """Partitions tracked since they were last forgotten."""
        return list(self._partitions)
