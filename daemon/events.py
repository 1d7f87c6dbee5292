"""The event contract: one Kafka record → one validated `Event`, or an `InvalidEventError`.

No I/O here. See DESIGN.md "The event contract" for the wire format (CloudEvents 1.0, structured
JSON mode, record key = the customer's external id, tombstone = delete of the key's customer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class EntityKind(StrEnum):
    CUSTOMER = "customer"
    CONTACT = "contact"
    ONBOARDING = "onboarding"


class Action(StrEnum):
    UPSERT = "upsert"  # *.created and *.updated: POST when unknown to Pivotal, PATCH when known
    DELETE = "delete"  # *.deleted and tombstones


@dataclass(frozen=True, kw_only=True, slots=True)
class EntityKey:
    """Identifies one CRM entity: what the entity map and the lanes are keyed by."""

    kind: EntityKind
    external_id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.external_id}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordRef:
    """The raw Kafka record, kept so a dead letter can hold exactly what arrived."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    # Broker/producer timestamp in epoch milliseconds (used by replay --from/--to).
    timestamp_ms: int | None = None

    def log_context(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One valid change, ready for the scheduler."""

    # CloudEvents `id`: the dedupe key of the checkpoint table.
    id: str
    # CloudEvents `type`, e.g. "contact.updated" ("customer.deleted" for a tombstone).
    type: str
    # CloudEvents `source`, e.g. "crm/hubspot".
    source: str
    # Which entity this changes, and how.
    entity: EntityKey
    action: Action
    # The external id of the customer the entity belongs to: the lane. For a customer it is
    # its own external id; for contacts and onboardings it is `data.customer`.
    customer_external_id: str
    # The fields to set (data minus the `customer` reference). Empty for deletes.
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Optional per-entity version (CloudEvents extension `sequence`), for stale detection.
    sequence: int | None = None
    time: datetime | None = None
    record: RecordRef

    def log_context(self) -> dict[str, Any]:
        return {
            **self.record.log_context(),
            "event_id": self.id,
            "event_type": self.type,
            "entity": str(self.entity),
        }
