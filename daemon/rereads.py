"""Re-read records: recognised as finished before they are parsed.

A consumer-group reset, a lost offsets topic or a new group reads records whose events are all
finished. Parsing and validating each one only to find its id in the checkpoint table cost more
than everything else the daemon did for it (half of a re-read's CPU, docs/benchmarks.md). So
intake first takes each record's id the cheap way (`id_hint`: the top-level `id` of a JSON
object, nothing validated) and asks the checkpoint table about the batch in one query. A record
is skipped unparsed only when its id's checkpoint row was written *for this very record* —
same topic, partition and offset. A Kafka record never changes, so that record was parsed,
finished and made durable before; every other record (new, a copy of a finished event at
another offset, a topic recreated since) takes the full path, exactly as if the hint did not
exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson

from daemon.events import EntityKey, RecordRef


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """What the checkpoint table holds for a record's id."""

    # Written for this very record (same topic, partition and offset): a re-read.
    same_record: bool
    entity: EntityKey | None


class CheckpointsOf(Protocol):
    async def checkpoints_of(
        self, candidates: list[tuple[str, RecordRef]]
    ) -> list[Checkpointed | None]: ...


def id_hint(record: RecordRef) -> str | None:
    """The record's event id if it is a JSON object with a string `id`; None otherwise.

    orjson, not the stdlib decoder that events.py validates with: twice as fast here (1.8 µs
    against 4.0 µs per event, measured), and whatever it refuses (invalid UTF-8, deep nesting,
    lone surrogates) only means no hint, so events.py decides and says why."""
    if record.value is None:
        return None
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    hint = document.get("id") if isinstance(document, dict) else None
    return hint if isinstance(hint, str) and hint else None


async def look_up(
    store: CheckpointsOf, records: list[RecordRef], hints: list[str | None]
) -> list[Checkpointed | None]:
    """The checkpoint of each record's hinted id (None: no hint, or no row), in one query."""
    candidates = [(hint, record) for hint, record in zip(hints, records, strict=True) if hint]
    answers = iter(await store.checkpoints_of(candidates) if candidates else [])
    return [next(answers) if hint else None for hint in hints]
