"""In-memory stand-ins for the pipeline's Postgres side, and Kafka records built from dicts.

Shared by the unit tests of intake and the recorder: no sockets, every call observable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaConnectionError

from daemon.entities import Intent
from daemon.events import EntityKey, RecordRef
from daemon.merged_events import Position
from daemon.metrics import Metrics
from daemon.outcomes import EntityState, Finished
from daemon.rereads import Checkpointed

TOPIC = "crm"


def record(offset: int, event_id: str, subject: str = "cus_1", **extra: Any) -> RecordRef:
    """A valid `customer.updated` record on partition 0 of TOPIC."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "crm/test",
        "type": "customer.updated",
        "subject": subject,
        "data": {"name": f"Customer {subject}"},
        **extra,
    }
    return RecordRef(
        topic=TOPIC,
        partition=0,
        offset=offset,
        key=subject.encode(),
        value=json.dumps(body).encode(),
    )


def raw_record(offset: int, value: bytes) -> RecordRef:
    return RecordRef(topic=TOPIC, partition=0, offset=offset, key=b"cus_1", value=value)


@dataclass
class MemoryCheckpoints:
    """Stands in for the checkpoint store: the finished ids, the entity map, the batch writes.

    While `down` is True (or `failures` is above zero, one per call), every call raises
    OSError, as asyncpg does when Postgres is unreachable.
    """

    done: set[str] = field(default_factory=set)
    states: dict[EntityKey, EntityState] = field(default_factory=dict)
    finished: list[Finished] = field(default_factory=list)
    written: dict[EntityKey, EntityState] = field(default_factory=dict)
    down: bool = False
    failures: int = 0
    calls: int = 0
    # While set, a batch write waits this long first (a Postgres slower than its caller).
    write_delay_seconds: float = 0.0

    def _outage(self) -> None:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        if self.failures > 0:
            self.failures -= 1
            raise OSError("connection reset")

    async def finished_ids(self, ids: Sequence[str]) -> set[str]:
        self._outage()
        return self.done & set(ids)

    async def checkpoints_of(
        self, candidates: list[tuple[str, RecordRef]]
    ) -> list[Checkpointed | None]:
        self._outage()
        rows: dict[str, Finished] = {}
        for item in self.finished:
            rows.setdefault(item.event_id, item)  # the first row of an id stays, as in Postgres
        return [self._checkpoint(event_id, record, rows) for event_id, record in candidates]

    def _checkpoint(
        self, event_id: str, record: RecordRef, rows: dict[str, Finished]
    ) -> Checkpointed | None:
        row = rows.get(event_id)
        if row is not None:
            position = (row.record.topic, row.record.partition, row.record.offset)
            same = position == (record.topic, record.partition, record.offset)
            return Checkpointed(same_record=same, entity=row.entity)
        # Ids put in `done` directly were finished by some other record.
        return Checkpointed(same_record=False, entity=None) if event_id in self.done else None

    async def load_entities(self, keys: list[EntityKey]) -> dict[EntityKey, EntityState]:
        self._outage()
        return {k: self.states[k] for k in keys if k in self.states}

    async def load_intents(self, keys: list[EntityKey]) -> dict[EntityKey, Intent]:
        self._outage()
        return {}

    async def record(self, finished: Sequence[Finished], entities: Sequence[EntityState]) -> None:
        self._outage()
        if self.write_delay_seconds:
            await asyncio.sleep(self.write_delay_seconds)
        self.finished += finished
        self.written.update({e.key: e for e in entities})
        self.done |= {f.event_id for f in finished}

    def outcomes(self) -> list[tuple[str, int, str]]:
        """(event id, offset, outcome) of every written row, in write order."""
        return [(f.event_id, f.record.offset, f.outcome.value) for f in self.finished]


def finished_count(metrics: Metrics, outcome: str, kind: str = "customer") -> float:
    value = metrics.registry.get_sample_value(
        "pivotal_sync_events_finished_total", {"outcome": outcome, "kind": kind}
    )
    return value or 0.0


@dataclass
class KafkaRecords:
    """Stands in for reading records back from Kafka (daemon/record_reader.py): what was
    published, by position; while `down`, every read fails as an unreachable cluster does."""

    published: dict[Position, RecordRef] = field(default_factory=dict)
    down: bool = False
    reads: int = 0

    def publish(self, record: RecordRef) -> None:
        self.published[(record.topic, record.partition, record.offset)] = record

    async def read(self, positions: Collection[Position]) -> dict[Position, RecordRef]:
        self.reads += 1
        if self.down:
            raise KafkaConnectionError("the cluster is down")
        return {position: self.published[position] for position in positions}
