"""Reading records back by position when Kafka no longer has some of them, or does not answer
(a fake consumer; the real broker is in tests/integration/test_record_reader.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from daemon import record_reader
from daemon.record_reader import UNAVAILABLE_HEADER, _read_partition


@dataclass
class Raw:
    offset: int
    topic: str = "crm"
    partition: int = 0
    key: bytes | None = b"k"
    value: bytes | None = b"v"
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


@dataclass
class FakeConsumer:
    """A partition holding `offsets` (what retention left); each fetch returns up to 3
    records from the position, as a broker resets an offset below the log start to it."""

    offsets: list[int]
    # The partition's bounds: its first offset and its end (one past the last).
    begin: int = 0
    end: int = 0
    silent: bool = False  # the broker does not answer fetches
    position: int = 0
    fetches: int = 0
    seeks: list[int] = field(default_factory=list)

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    async def getmany(self, tp: Any, timeout_ms: int, max_records: int) -> dict[Any, list[Raw]]:
        self.fetches += 1
        ahead = [o for o in self.offsets if o >= self.position][:3]
        return {tp: [Raw(offset) for offset in ahead]} if ahead and not self.silent else {}

    async def beginning_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, self.begin)

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, self.end)


async def test_a_record_deleted_by_retention_comes_back_marked_unavailable() -> None:
    consumer = FakeConsumer(offsets=list(range(10, 20)))
    found = await _read_partition(consumer, "crm", 0, [5, 12, 18])
    assert found[("crm", 0, 12)].value == b"v"
    assert found[("crm", 0, 18)].value == b"v"
    gone = found[("crm", 0, 5)]
    assert (gone.key, gone.value) == (None, None)
    assert gone.headers == ((UNAVAILABLE_HEADER, b"1"),), "never mistaken for a tombstone"


async def test_the_reader_seeks_past_the_gap_between_wanted_offsets() -> None:
    consumer = FakeConsumer(offsets=list(range(1000)))
    await _read_partition(consumer, "crm", 0, [1, 500, 999])
    assert consumer.seeks == [1, 500, 999]


async def test_records_of_a_partition_that_retention_emptied_come_back_unavailable() -> None:
    # Nothing at or after the wanted offsets, and the log starts past them.
    consumer = FakeConsumer(offsets=[], begin=20, end=20)
    found = await _read_partition(consumer, "crm", 0, [3, 7])
    assert [found[("crm", 0, o)].headers for o in (3, 7)] == [((UNAVAILABLE_HEADER, b"1"),)] * 2


async def test_a_partition_that_does_not_answer_is_an_error_not_missing_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wanted offset is inside the partition's bounds: it is there, the broker is silent.
    monkeypatch.setattr(record_reader, "READ_LIMIT_SECONDS", 0.0)
    consumer = FakeConsumer(offsets=[3], begin=0, end=4, silent=True)
    with pytest.raises(KafkaTimeoutError):
        await _read_partition(consumer, "crm", 0, [3])
