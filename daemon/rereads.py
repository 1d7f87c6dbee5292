"""Re-read records: recognised as finished before they are parsed.

A consumer-group reset, a lost offsets topic or a new group reads records whose events are all
finished. Parsing and validating each one only to find its id in the checkpoint table cost more
than everything else the daemon did for it (half of a re-read's CPU, docs/benchmarks.md). So
intake first takes each record's id the cheap way (`peek`: the top-level `id` of a JSON
object, nothing validated) and asks the checkpoint table about the batch in one query. A record
is skipped unparsed only when its id's checkpoint row was written *for this very record* —
same topic, partition and offset. A Kafka record never changes, so that record was parsed,
finished and made durable before; every other record (new, a copy of a finished event at
another offset, a topic recreated since) takes the full path, exactly as if the hint did not
exist.

The same orjson reading serves the full path too: a record that is not skipped would be
decoded again by the stdlib decoder events.py validates with, and orjson's document is handed
over instead wherever it is exactly what that decoder would return (`Peek.document`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

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


# orjson reads an integer beyond 64 bits (the shortest such has 19 digits) as a float, where
# the stdlib keeps it exact: a value with a run of 19 digits anywhere is left to the stdlib.
# Found by mapping every digit to "0" and every other byte to ".": 0.3 µs for an ordinary
# event, where a regular expression took 1.9 µs, more than orjson's whole reading (0.5 µs).
_DIGITS_AS_ZEROS = bytes(ord("0") if ord("0") <= i <= ord("9") else ord(".") for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


class Peek(NamedTuple):
    """What one cheap reading of a record's value found (a tuple: one per record, made fast)."""

    # The top-level `id` of a JSON object, if it is a non-empty string.
    hint: str | None = None
    # orjson's reading of the value, when it is a JSON object.
    reading: dict[str, Any] | None = None
    value: bytes = b""

    def document(self) -> dict[str, Any] | None:
        """The reading where it is exactly what the stdlib decoder would return; None: let the
        stdlib decode (or refuse). Asked only for records that take the full path."""
        if self.reading is None or _LONG_DIGIT_RUN in self.value.translate(_DIGITS_AS_ZEROS):
            return None
        return self.reading


NOTHING = Peek()


def peek(record: RecordRef) -> Peek:
    """Read the record's value once with orjson: its event id hint, and the document itself
    where that reading is exactly the stdlib decoder's (`Peek.document`).

    orjson, not the stdlib decoder that events.py validates with: twice as fast here (1.8 µs
    against 4.0 µs per event, measured), and whatever it refuses (invalid UTF-8, deep nesting,
    lone surrogates, NaN, floats that overflow) only means no hint and no document, so
    events.py decides and says why. What it accepts it reads as the stdlib does, except
    integers beyond 64 bits (tests/unit/test_rereads.py compares the two decoders)."""
    if record.value is None:
        return NOTHING
    try:
        document = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return NOTHING
    if not isinstance(document, dict):
        return NOTHING
    hint = document.get("id")
    return Peek(hint if isinstance(hint, str) and hint else None, document, record.value)


async def look_up(
    store: CheckpointsOf, records: list[RecordRef], hints: list[str | None]
) -> list[Checkpointed | None]:
    """The checkpoint of each record's hinted id (None: no hint, or no row), in one query."""
    candidates = [(hint, record) for hint, record in zip(hints, records, strict=True) if hint]
    answers = iter(await store.checkpoints_of(candidates) if candidates else [])
    return [next(answers) if hint else None for hint in hints]
