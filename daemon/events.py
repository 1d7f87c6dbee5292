"""The event contract: one Kafka record → one validated `Event`, or an `InvalidEventError`.

No I/O here. See docs/events.md for the wire format (CloudEvents 1.0, structured
JSON mode, record key = the customer's external id, tombstone = delete of the key's customer).

    parse_record(record) -> Event          raises InvalidEventError(reason, detail)
    parse_cloudevent(document, record)     the same, from the event in structured form
    validate_fields(kind, fields) -> None  raises InvalidEventError("invalid_field", detail)

`reason` is always one of `INVALID_EVENT_REASONS` (a metric label and a dead-letter column).
The field rules (`FIELD_RULES`) list only what Pivotal would *certainly* reject (a wrong JSON
type, a value outside a documented enum); unknown fields pass through untouched, because Pivotal
may add optional fields and ignores the ones it does not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from daemon.errors import InvalidEventError


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

    @classmethod
    def of(cls, record: Any) -> RecordRef:
        """From an aiokafka `ConsumerRecord`."""
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple((str(k), bytes(v or b"")) for k, v in record.headers)
            if record.headers
            else (),
            timestamp_ms=record.timestamp,
        )


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


# ---------------------------------------------------------------------------------------------
# Parsing: one Kafka record → one Event.

INVALID_EVENT_REASONS = (
    "invalid_json",  # the value is not UTF-8 JSON
    "not_cloudevent",  # not a CloudEvents 1.0 object (specversion, id, source, type, time, …)
    "unknown_type",  # a `type` outside EVENT_TYPES
    "missing_customer",  # no customer to file it under (data.customer, or a customer's subject)
    "invalid_field",  # data Pivotal would certainly reject (wrong JSON type, bad enum)
    "missing_key",  # no entity id: a tombstone without key, a contact/onboarding without subject
    "cloudevents_batch",  # a CloudEvents batch (one record must stay one event)
    "not_debezium",  # a record on a Debezium topic that is no row change (daemon/formats/)
)

EVENT_TYPES: Mapping[str, tuple[EntityKind, Action]] = {
    f"{kind}.{verb}": (kind, Action.DELETE if verb == "deleted" else Action.UPSERT)
    for kind in EntityKind
    for verb in ("created", "updated", "deleted")
}

SPECVERSION = "1.0"
TOMBSTONE_SOURCE = "kafka/tombstone"
# Ids end up in Postgres b-tree indexes (checkpoint, entity map), whose rows are capped near
# 2.7 kB; a hostile 1 MB id must become a dead letter, not a stuck checkpoint write.
MAX_ID_CHARS = 256
# The entity map stores `sequence` as a bigint.
MAX_SEQUENCE = 2**63 - 1
_SEQUENCE_TEXT = re.compile(r"[0-9]{1,19}", re.ASCII)


def tombstone_id(record: RecordRef) -> str:
    """The synthetic event id of a tombstone: stable, so a replay finds it finished."""
    return f"tombstone:{record.topic}:{record.partition}:{record.offset}"


def parse_record(record: RecordRef, document: dict[str, Any] | None = None) -> Event:
    """Turn one Kafka record into an Event, or raise InvalidEventError with a fixed reason.

    `document`: the value already decoded, exactly as `_load_json` would (daemon/rereads.py)."""
    if record.value is None:
        return _tombstone(record)
    return parse_cloudevent(document if document is not None else _load_json(record.value), record)


def parse_cloudevent(document: Any, record: RecordRef) -> Event:
    """An event already read into its structured form (daemon/formats/cloudevents.py reads the
    binary content mode into one) → an Event, or InvalidEventError with a fixed reason."""
    if not isinstance(document, dict):
        raise InvalidEventError(
            "not_cloudevent", f"expected a JSON object, got {_json_type(document)}"
        )
    _check_context(document)
    event_type = document["type"]
    if event_type not in EVENT_TYPES:
        raise InvalidEventError("unknown_type", f"unknown event type {_show(event_type)}")
    kind, action = EVENT_TYPES[event_type]
    data = _data(document.get("data"), action)
    subject = _optional_identifier(document, "subject", "not_cloudevent")
    customer = _customer_of(kind, subject, data)
    if kind is not EntityKind.CUSTOMER and subject is None:
        raise InvalidEventError(
            "missing_key", f"a {kind} event needs a `subject` (the {kind}'s id)"
        )
    fields: dict[str, Any] = {}
    if action is Action.UPSERT:
        fields = {name: value for name, value in data.items() if name != "customer"}
        validate_fields(kind, fields)
    return Event(
        id=document["id"],
        type=event_type,
        source=document["source"],
        entity=EntityKey(kind=kind, external_id=subject or customer),
        action=action,
        customer_external_id=customer,
        fields=fields,
        sequence=_sequence(document.get("sequence")),
        time=_time(document.get("time")),
        record=record,
    )


def _tombstone(record: RecordRef) -> Event:
    # The record key is the customer's external id (the event contract), so a null value
    # deletes that customer. Without a usable key there is nothing to delete.
    try:
        customer = record.key.decode("utf-8") if record.key is not None else ""
    except UnicodeDecodeError:
        raise InvalidEventError("missing_key", "tombstone key is not UTF-8") from None
    problem = identifier_problem(customer)
    if problem:
        raise InvalidEventError("missing_key", f"tombstone key {problem}")
    return Event(
        id=tombstone_id(record),
        type="customer.deleted",
        source=TOMBSTONE_SOURCE,
        entity=EntityKey(kind=EntityKind.CUSTOMER, external_id=customer),
        action=Action.DELETE,
        customer_external_id=customer,
        time=_record_time(record.timestamp_ms),
        record=record,
    )


def _load_json(value: bytes) -> Any:
    try:
        return _DECODER.decode(value.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidEventError("invalid_json", "value is not UTF-8") from None
    # ValueError covers JSONDecodeError and over-long integers; RecursionError deep nesting.
    except (ValueError, RecursionError) as error:
        raise InvalidEventError("invalid_json", _clip(str(error))) from None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and Pivotal would choke on them.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every record: `json.loads` with an option builds a new one per call, which
# cost more than the decoding itself (6.3 µs against 2.6 µs per event, measured).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _check_context(document: dict[str, Any]) -> None:
    """The required CloudEvents context attributes; optional ones are checked where read."""
    if document.get("specversion") != SPECVERSION:
        raise InvalidEventError(
            "not_cloudevent",
            f"specversion must be {SPECVERSION!r}, got {_show(document.get('specversion'))}",
        )
    for name in ("id", "source", "type"):
        if _optional_identifier(document, name, "not_cloudevent") is None:
            raise InvalidEventError("not_cloudevent", f"`{name}` is required")


def _optional_identifier(document: Mapping[str, Any], name: str, reason: str) -> str | None:
    """A string id attribute: None when absent, null or empty; InvalidEventError when unusable."""
    value = document.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidEventError(reason, f"`{name}` must be a string, got {_json_type(value)}")
    problem = identifier_problem(value)
    if problem:
        raise InvalidEventError(reason, f"`{name}` {problem}")
    return value


def identifier_problem(value: str) -> str | None:
    """What makes `value` unusable as an external id or event id (None: nothing)."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_CHARS:
        return f"is longer than {MAX_ID_CHARS} characters"
    # Postgres text cannot hold NUL, and lone surrogates cannot be encoded for it.
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def _data(data: Any, action: Action) -> dict[str, Any]:
    if data is None:
        if action is Action.UPSERT:
            raise InvalidEventError("invalid_field", "data: an upsert needs an object of fields")
        return {}
    if not isinstance(data, dict):
        raise InvalidEventError(
            "invalid_field", f"data: expected an object, got {_json_type(data)}"
        )
    return data


def _customer_of(kind: EntityKind, subject: str | None, data: Mapping[str, Any]) -> str:
    """The lane: a customer's own id (its subject), or a child's `data.customer`."""
    if kind is EntityKind.CUSTOMER:
        # The record key should equal the subject; when a producer gets the key wrong we trust
        # the subject, which names the entity (the key only chose the partition).
        if subject is None:
            raise InvalidEventError("missing_customer", "a customer event needs a `subject`")
        return subject
    customer = data.get("customer")
    if customer is None or customer == "":
        raise InvalidEventError("missing_customer", f"a {kind} event needs `data.customer`")
    if not isinstance(customer, str):
        raise InvalidEventError(
            "invalid_field", f"data.customer: expected a string, got {_json_type(customer)}"
        )
    problem = identifier_problem(customer)
    if problem:
        raise InvalidEventError("invalid_field", f"data.customer: {problem}")
    return customer


def _sequence(value: Any) -> int | None:
    """`sequence` as an int: a JSON integer or a decimal string ("42"); never a bool or float."""
    if value is None:
        return None
    if isinstance(value, str) and _SEQUENCE_TEXT.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQUENCE:
        return value
    raise InvalidEventError(
        "not_cloudevent",
        f"`sequence` must be an integer from 0 to {MAX_SEQUENCE}, got {_show(value)}",
    )


def _time(value: Any) -> datetime | None:
    """`time` as an aware datetime (RFC 3339 requires an offset)."""
    if value is None:
        return None
    parsed = None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidEventError(
            "not_cloudevent", f"`time` must be an RFC 3339 timestamp, got {_show(value)}"
        )
    return parsed


def _record_time(timestamp_ms: int | None) -> datetime | None:
    if timestamp_ms is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Field rules: what Pivotal would certainly reject (docs/pivotal-api.md §5). A checker returns the
# problem in a few words, or None when the value is acceptable.

FieldCheck = Callable[[Any], str | None]

CUSTOMER_STATUSES = ("onboarding", "active", "at_risk", "churned", "archived")
ONBOARDING_PHASES = (
    "before_getting_started",
    "program_design",
    "review",
    "program_buildout",
    "internal_qa",
    "launch",
    "completed",
)
ONBOARDING_STATES = ("active", "paused", "at_risk", "waiting")


def _expect(type_name: str, accepts: Callable[[Any], bool]) -> FieldCheck:
    def check(value: Any) -> str | None:
        return None if accepts(value) else f"expected {type_name}, got {_json_type(value)}"

    return check


string = _expect("a string", lambda v: isinstance(v, str))
boolean = _expect("a boolean", lambda v: isinstance(v, bool))
integer = _expect("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
json_object = _expect("an object", lambda v: isinstance(v, dict))


def nullable(check: FieldCheck) -> FieldCheck:
    def nullable_check(value: Any) -> str | None:
        return None if value is None else check(value)

    return nullable_check


def non_empty_string(value: Any) -> str | None:
    return string(value) or (None if value.strip() else "must not be empty")


def one_of(allowed: tuple[str, ...]) -> FieldCheck:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in allowed:
            return None
        return f"{_show(value)} is not one of {', '.join(allowed)}"

    return check


def email(value: Any) -> str | None:
    problem = string(value)
    if problem:
        return problem
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain:
        return f"{_show(value)} is not an e-mail address"
    return None


def string_list(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None
    return f"expected a list of strings, got {_json_type(value)}"


CRM_ID = nullable(string)

CUSTOMER_FIELDS: Mapping[str, FieldCheck] = {
    "name": non_empty_string,  # required on create; never blank
    "slug": string,  # unique per workspace (409 slug_taken)
    "domain": string,
    "status": one_of(CUSTOMER_STATUSES),
    "plan": string,  # free-form
    "mrr": integer,
    "monthly_orders": integer,
    "metadata": json_object,  # free JSON, never interpreted by Pivotal
    "hubspot_company_id": CRM_ID,
    "hubspot_deal_id": CRM_ID,
    "stripe_customer_id": CRM_ID,
    "intercom_company_id": CRM_ID,
    "slack_channel_id": CRM_ID,
}

CONTACT_FIELDS: Mapping[str, FieldCheck] = {
    "name": string,
    "email": email,  # lower-cased by Pivotal; 409 email_taken on a collision
    "title": nullable(string),
    "is_primary": boolean,
    "labels": string_list,
    "metadata": json_object,
}

ONBOARDING_FIELDS: Mapping[str, FieldCheck] = {
    "phase": one_of(ONBOARDING_PHASES),
    "state": one_of(ONBOARDING_STATES),
    "waiting_on_customer": boolean,
    "name": nullable(string),
    "notes": nullable(string),
    "target_launch_date": string,
    "metadata": json_object,
}

FIELD_RULES: Mapping[EntityKind, Mapping[str, FieldCheck]] = {
    EntityKind.CUSTOMER: CUSTOMER_FIELDS,
    EntityKind.CONTACT: CONTACT_FIELDS,
    EntityKind.ONBOARDING: ONBOARDING_FIELDS,
}


def field_problems(kind: EntityKind, fields: Mapping[str, Any]) -> list[str]:
    """Every problem of `fields` as "data.<field>: <problem>"; empty when Pivotal may take them."""
    rules = FIELD_RULES[kind]
    problems = []
    for name, value in fields.items():
        check = rules.get(name)
        problem = check(value) if check is not None else None
        if problem:
            problems.append(f"data.{name}: {problem}")
    return problems


def validate_fields(kind: EntityKind, fields: Mapping[str, Any]) -> None:
    """Raise InvalidEventError("invalid_field") naming every field Pivotal would reject."""
    problems = field_problems(kind, fields)
    if problems:
        raise InvalidEventError("invalid_field", "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Details for people: short, and never a dump of hostile input.

MAX_DETAIL_VALUE_CHARS = 60


# Order matters: bool is a subclass of int.
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (type(None), "null"),
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
)


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "object")


def _show(value: Any) -> str:
    """A value for a detail: short strings quoted, anything else by its JSON type."""
    if isinstance(value, str):
        return _clip(json.dumps(value))
    return _json_type(value)


def _clip(text: str) -> str:
    if len(text) <= MAX_DETAIL_VALUE_CHARS:
        return text
    return text[: MAX_DETAIL_VALUE_CHARS - 1] + "…"
