"""What became of each event: the records the dispatcher hands to the checkpoint store.

Plain frozen data, no I/O: the dispatcher builds them, `checkpoints` persists them in one
transaction, `progress` learns from them which offsets are safe to commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from daemon.events import EntityKey, RecordRef


class Outcome(StrEnum):
    """How an event finished. A closed set: it is a metric label and a database column."""

    SENT = "sent"  # its request succeeded (alone, or as the last of a coalesced group)
    COALESCED = "coalesced"  # merged into a later event's request; applied by that request
    SUPERSEDED = "superseded"  # a later delete of the same entity made it moot
    DUPLICATE = "duplicate"  # its id was already in the checkpoint table: skipped, no request
    STALE = "stale"  # its `sequence` is not newer than what was applied: skipped
    NOOP = "noop"  # nothing to do, e.g. a delete of an entity Pivotal never had
    DEAD_LETTERED = "dead_lettered"  # parked with a reason; never sent or sent and refused


@dataclass(frozen=True, kw_only=True, slots=True)
class EntityState:
    """One row of the entity map: (kind, external id) → Pivotal id."""

    key: EntityKey
    pivotal_id: str | None
    customer_external_id: str
    # Highest `sequence` applied to this entity, for stale detection.
    last_sequence: int | None = None
    deleted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetter:
    """Why an event (or an unparseable record) was parked, with what came back."""

    reason: str  # short snake_case code: invalid_json, unknown_type, http_400, parent_missing…
    detail: str
    status: int | None = None  # HTTP status when Pivotal refused it
    response_body: str | None = None
    attempts: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Finished:
    """One event (or one record that never became an event) that is done for good."""

    # The CloudEvents id; for a record that could not be parsed, a synthetic
    # "record:{topic}:{partition}:{offset}" so that a replay finds it finished too.
    event_id: str
    record: RecordRef
    outcome: Outcome
    entity: EntityKey | None = None
    pivotal_id: str | None = None
    dead_letter: DeadLetter | None = None

    @staticmethod
    def record_id(record: RecordRef) -> str:
        return f"record:{record.topic}:{record.partition}:{record.offset}"
