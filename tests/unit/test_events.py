"""parse_record: the event contract of docs/events.md, and every way a record can break it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidEventError
from daemon.events import (
    CUSTOMER_STATUSES,
    INVALID_EVENT_REASONS,
    MAX_ID_CHARS,
    Action,
    EntityKey,
    EntityKind,
    RecordRef,
    parse_record,
    validate_fields,
)

ABSENT = object()


def record(value: Any, *, key: bytes | None = b"cus_1", offset: int = 7) -> RecordRef:
    """A Kafka record whose value is a dict (JSON-encoded), raw bytes, or None (tombstone)."""
    raw = json.dumps(value).encode() if isinstance(value, dict | list | str | int) else value
    return RecordRef(topic="crm", partition=2, offset=offset, key=key, value=raw)


def cloudevent(event_type: str = "customer.updated", **overrides: Any) -> dict[str, Any]:
    """A valid CloudEvent; an override of ABSENT removes the attribute."""
    kind = event_type.partition(".")[0]
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt_1",
        "source": "crm/hubspot",
        "type": event_type,
        "subject": "cus_1" if kind == "customer" else f"{kind}_1",
        "time": "2026-11-26T10:00:00Z",
        "data": {"name": "Aurora"} if kind == "customer" else {"customer": "cus_1"},
    }
    document.update(overrides)
    return {name: value for name, value in document.items() if value is not ABSENT}


def reason_of(value: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidEventError) as caught:
        parse_record(record(value, **kwargs))
    assert caught.value.reason in INVALID_EVENT_REASONS
    return caught.value.reason


def detail_of(value: Any) -> str:
    with pytest.raises(InvalidEventError) as caught:
        parse_record(record(value))
    return caught.value.detail


# -- valid events -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EntityKind))
@pytest.mark.parametrize(
    ("verb", "action"),
    [("created", Action.UPSERT), ("updated", Action.UPSERT), ("deleted", Action.DELETE)],
)
def test_every_type_of_the_table_parses_to_its_entity_and_action(
    kind: EntityKind, verb: str, action: Action
) -> None:
    event = parse_record(record(cloudevent(f"{kind}.{verb}")))
    assert event.type == f"{kind}.{verb}"
    assert event.action is action
    assert event.entity == EntityKey(
        kind=kind, external_id=f"{kind}_1".replace("customer_1", "cus_1")
    )
    assert event.customer_external_id == "cus_1"


def test_a_customer_upsert_carries_its_data_as_fields_and_its_subject_as_lane() -> None:
    event = parse_record(record(cloudevent(data={"name": "Aurora", "status": "active"})))
    assert event.id == "evt_1"
    assert event.source == "crm/hubspot"
    assert event.fields == {"name": "Aurora", "status": "active"}
    assert event.customer_external_id == "cus_1"
    assert event.time == datetime(2026, 11, 26, 10, tzinfo=UTC)


def test_a_contact_files_under_data_customer_which_is_not_a_field() -> None:
    data = {"customer": "cus_9", "name": "Ada", "email": "ada@example.com"}
    event = parse_record(record(cloudevent("contact.created", data=data), key=b"cus_9"))
    assert event.entity == EntityKey(kind=EntityKind.CONTACT, external_id="contact_1")
    assert event.customer_external_id == "cus_9"
    assert event.fields == {"name": "Ada", "email": "ada@example.com"}
    assert data["customer"] == "cus_9", "the parsed document is not mutated"


def test_a_delete_carries_no_fields() -> None:
    event = parse_record(
        record(cloudevent("onboarding.deleted", data={"customer": "cus_1", "phase": "x"}))
    )
    assert event.fields == {}


def test_a_customer_delete_needs_no_data() -> None:
    assert parse_record(record(cloudevent("customer.deleted", data=None))).action is Action.DELETE
    assert parse_record(record(cloudevent("customer.deleted", data=ABSENT))).fields == {}


def test_a_customer_whose_key_differs_from_its_subject_trusts_the_subject() -> None:
    event = parse_record(record(cloudevent(), key=b"someone_else"))
    assert event.entity.external_id == "cus_1"
    assert event.customer_external_id == "cus_1"


@pytest.mark.parametrize(
    ("raw", "expected"), [("42", 42), (42, 42), (0, 0), ("007", 7), (None, None)]
)
def test_sequence_is_an_integer_or_an_integer_string(raw: Any, expected: int | None) -> None:
    assert parse_record(record(cloudevent(sequence=raw))).sequence == expected


def test_time_and_subject_may_be_null_or_absent_where_optional() -> None:
    assert parse_record(record(cloudevent(time=None))).time is None
    assert parse_record(record(cloudevent(time=ABSENT))).time is None


def test_unknown_fields_pass_through_unchanged() -> None:
    data = {"name": "A", "future_field": {"deep": [1, 2]}, "metadata": {"external_id": "crm"}}
    assert parse_record(record(cloudevent(data=data))).fields == data


def test_unknown_cloudevent_extensions_are_ignored() -> None:
    assert parse_record(
        record(cloudevent(traceparent="00-abc", datacontenttype="application/json"))
    )


# -- tombstones ---------------------------------------------------------------------------------


def test_a_tombstone_deletes_the_customer_of_its_key() -> None:
    tombstone = RecordRef(
        topic="crm", partition=2, offset=7, key=b"cus_1", value=None, timestamp_ms=0
    )
    event = parse_record(tombstone)
    assert event.id == "tombstone:crm:2:7"
    assert event.type == "customer.deleted"
    assert event.source == "kafka/tombstone"
    assert event.action is Action.DELETE
    assert event.entity == EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")
    assert event.customer_external_id == "cus_1"
    assert event.time == datetime(1970, 1, 1, tzinfo=UTC)
    assert event.record is tombstone


@pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b"a" * (MAX_ID_CHARS + 1), b"a\x00b"])
def test_a_tombstone_without_a_usable_key_is_missing_key(key: bytes | None) -> None:
    assert reason_of(None, key=key) == "missing_key"


# -- invalid records, by reason -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"", b"not json", b"\xff\xfe{}", b'{"a": NaN}', b"[" * 100_000, b"1" * 5000, b'{"a": 1'],
)
def test_a_value_that_is_not_utf8_json_is_invalid_json(value: bytes) -> None:
    assert reason_of(value) == "invalid_json"


@pytest.mark.parametrize(
    "document",
    [
        [cloudevent()],
        "customer.updated",
        42,
        cloudevent(specversion="0.3"),
        cloudevent(specversion=1.0),
        cloudevent(specversion=ABSENT),
        cloudevent(id=ABSENT),
        cloudevent(id=""),
        cloudevent(id=42),
        cloudevent(id="x" * (MAX_ID_CHARS + 1)),
        cloudevent(id="evt\u0000"),
        cloudevent(source=ABSENT),
        cloudevent(source=["crm"]),
        cloudevent(type=ABSENT),
        cloudevent(type=None),
        cloudevent(subject=42),
        cloudevent(time="yesterday"),
        cloudevent(time="2026-11-26T10:00:00"),
        cloudevent(time=1764151200),
        cloudevent(sequence="4x2"),
        cloudevent(sequence="-1"),
        cloudevent(sequence=" 42"),
        cloudevent(sequence=-1),
        cloudevent(sequence=4.2),
        cloudevent(sequence=True),
        cloudevent(sequence=2**63),
        cloudevent(sequence="9" * 30),
    ],
)
def test_a_document_that_is_not_a_cloudevent_is_not_cloudevent(document: Any) -> None:
    assert reason_of(document) == "not_cloudevent"


def test_a_lone_surrogate_in_an_id_is_not_cloudevent() -> None:
    assert reason_of(
        b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"customer.updated"}'
    ) == ("not_cloudevent")


@pytest.mark.parametrize(
    "event_type", ["customer.merged", "deal.created", "Customer.Created", "customer"]
)
def test_a_type_outside_the_table_is_unknown_type(event_type: str) -> None:
    assert reason_of(cloudevent(type=event_type)) == "unknown_type"


@pytest.mark.parametrize(
    "document",
    [
        cloudevent("customer.updated", subject=ABSENT),
        cloudevent("customer.deleted", subject=""),
        cloudevent("contact.created", data={"name": "Ada"}),
        cloudevent("contact.deleted", data=None),
        cloudevent("onboarding.updated", data={"customer": None, "phase": "review"}),
        cloudevent("onboarding.deleted", data={"customer": ""}),
    ],
)
def test_an_event_without_its_customer_is_missing_customer(document: dict[str, Any]) -> None:
    assert reason_of(document) == "missing_customer"


@pytest.mark.parametrize("event_type", ["contact.updated", "onboarding.deleted"])
def test_a_child_event_without_subject_is_missing_key(event_type: str) -> None:
    assert reason_of(cloudevent(event_type, subject=None)) == "missing_key"


@pytest.mark.parametrize(
    "document",
    [
        cloudevent("customer.updated", data=None),
        cloudevent("customer.updated", data=ABSENT),
        cloudevent("customer.updated", data=["name"]),
        cloudevent("customer.deleted", data="gone"),
        cloudevent("contact.updated", data={"customer": 42}),
    ],
)
def test_data_of_the_wrong_shape_is_invalid_field(document: dict[str, Any]) -> None:
    assert reason_of(document) == "invalid_field"


# -- field rules --------------------------------------------------------------------------------

INVALID_FIELDS = [
    ("customer", {"name": ""}),
    ("customer", {"name": "   "}),
    ("customer", {"name": None}),
    ("customer", {"name": 7}),
    ("customer", {"slug": 7}),
    ("customer", {"domain": ["a.com"]}),
    ("customer", {"status": "paying"}),
    ("customer", {"status": None}),
    ("customer", {"plan": False}),
    ("customer", {"mrr": "1500"}),
    ("customer", {"mrr": 15.5}),
    ("customer", {"mrr": True}),
    ("customer", {"monthly_orders": None}),
    ("customer", {"metadata": "x"}),
    ("customer", {"metadata": [1]}),
    ("customer", {"hubspot_company_id": 123}),
    ("customer", {"slack_channel_id": {}}),
    ("contact", {"name": 1}),
    ("contact", {"email": "ada"}),
    ("contact", {"email": "@example.com"}),
    ("contact", {"email": "ada@"}),
    ("contact", {"email": "a@b@c"}),
    ("contact", {"email": None}),
    ("contact", {"title": 3}),
    ("contact", {"is_primary": "yes"}),
    ("contact", {"is_primary": 1}),
    ("contact", {"labels": "vip"}),
    ("contact", {"labels": ["vip", 2]}),
    ("contact", {"metadata": None}),
    ("onboarding", {"phase": "live"}),
    ("onboarding", {"phase": 3}),
    ("onboarding", {"state": "blocked"}),
    ("onboarding", {"waiting_on_customer": "true"}),
    ("onboarding", {"name": 5}),
    ("onboarding", {"notes": ["a"]}),
    ("onboarding", {"target_launch_date": None}),
    ("onboarding", {"metadata": 1}),
]


@pytest.mark.parametrize(("kind", "data"), INVALID_FIELDS)
def test_a_field_pivotal_would_certainly_reject_is_invalid_field(
    kind: str, data: dict[str, Any]
) -> None:
    document = cloudevent(f"{kind}.updated", data={"customer": "cus_1", **data})
    assert reason_of(document) == "invalid_field"
    assert f"data.{next(iter(data))}" in detail_of(document)


VALID_FIELDS = [
    ("customer", {"name": "Aurora", "slug": "aurora", "domain": "aurora.example", "plan": "pro"}),
    *[("customer", {"status": status}) for status in CUSTOMER_STATUSES],
    ("customer", {"mrr": 150_000, "monthly_orders": 0, "metadata": {"a": [1, {"b": None}]}}),
    ("customer", {"mrr": 10**400}),
    ("customer", {"hubspot_company_id": None, "stripe_customer_id": "cus_x"}),
    ("contact", {"name": "Ada", "email": "Ada@Example.com", "title": None, "is_primary": True}),
    ("contact", {"labels": [], "metadata": {}, "title": "CTO"}),
    ("onboarding", {"phase": "launch", "state": "waiting", "waiting_on_customer": False}),
    ("onboarding", {"name": None, "notes": None, "target_launch_date": "2026-12-01"}),
]


@pytest.mark.parametrize(("kind", "data"), VALID_FIELDS)
def test_fields_within_the_api_rules_are_accepted(kind: str, data: dict[str, Any]) -> None:
    event = parse_record(record(cloudevent(f"{kind}.updated", data={"customer": "cus_1", **data})))
    assert event.fields == data


def test_the_detail_names_every_bad_field_without_echoing_huge_values() -> None:
    detail = detail_of(cloudevent(data={"status": "x" * 10_000, "mrr": "1", "name": "ok"}))
    assert "data.status" in detail
    assert "data.mrr: expected an integer, got string" in detail
    assert len(detail) < 300


def test_a_delete_is_not_refused_for_its_data_fields() -> None:
    assert parse_record(
        record(cloudevent("contact.deleted", data={"customer": "cus_1", "email": 1}))
    )


def test_validate_fields_is_usable_on_merged_fields() -> None:
    validate_fields(EntityKind.ONBOARDING, {"phase": "review", "anything": object()})
    with pytest.raises(InvalidEventError) as caught:
        validate_fields(EntityKind.ONBOARDING, {"phase": "reviewing"})
    assert caught.value.reason == "invalid_field"


# -- hostile input ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
ATTRIBUTE = (
    st.sampled_from(["1.0", "customer.updated", "contact.deleted", "cus_1", "42", ""]) | JSON_VALUES
)


def refusal(value: RecordRef) -> str | None:
    """The reason parse_record refuses the record, None when it parses."""
    try:
        parse_record(value)
    except InvalidEventError as error:
        return error.reason
    return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.none() | st.binary(max_size=20))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(
    value: bytes, key: bytes | None
) -> None:
    outcome = refusal(RecordRef(topic="t", partition=0, offset=0, key=key, value=value))
    assert outcome is None or outcome in INVALID_EVENT_REASONS


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            name: ATTRIBUTE
            for name in ("specversion", "id", "source", "type", "subject", "time", "sequence")
        }
        | {
            "data": JSON_VALUES
            | st.dictionaries(st.sampled_from(["customer", "name", "email", "phase"]), ATTRIBUTE)
        },
    )
)
def test_arbitrary_json_documents_never_raise_anything_but_invalid_event(
    document: dict[str, Any],
) -> None:
    outcome = refusal(record(json.dumps(document).encode()))
    assert outcome is None or outcome in INVALID_EVENT_REASONS
