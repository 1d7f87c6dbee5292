"""CloudEvents over Kafka: structured and binary content modes give the same event; batch mode
and broken headers are dead letters with a reason of their own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.errors import InvalidEventError
from daemon.events import INVALID_EVENT_REASONS, Action, EntityKind, RecordRef
from daemon.formats.cloudevents import content_mode, decode_builtin, read_cloudevent

ATTRIBUTES = {
    "specversion": "1.0",
    "id": "evt_1",
    "source": "crm/hubspot",
    "type": "contact.updated",
    "subject": "con_1",
    "time": "2026-11-26T10:00:00Z",
    "sequence": "42",
}
DATA = {"customer": "cus_1", "name": "Ada", "email": "ada@example.com"}


def binary(
    attributes: dict[str, str] | None = None,
    data: Any = DATA,
    content_type: str | None = "application/json",
    extra: tuple[tuple[str, bytes], ...] = (),
) -> RecordRef:
    headers = [(f"ce_{k}", v.encode()) for k, v in (attributes or ATTRIBUTES).items()]
    if content_type is not None:
        headers.append(("content-type", content_type.encode()))
    value = data if isinstance(data, bytes) else json.dumps(data).encode()
    return RecordRef(
        topic="crm", partition=0, offset=3, key=b"cus_1", value=value, headers=(*headers, *extra)
    )


def structured(content_type: str | None = None) -> RecordRef:
    headers = (("content-type", content_type.encode()),) if content_type else ()
    value = json.dumps({**ATTRIBUTES, "data": DATA}).encode()
    return RecordRef(topic="crm", partition=0, offset=3, key=b"cus_1", value=value, headers=headers)


def reason_of(record: RecordRef) -> str:
    with pytest.raises(InvalidEventError) as caught:
        decode_builtin(record)
    assert caught.value.reason in INVALID_EVENT_REASONS
    return caught.value.reason


def test_binary_mode_event_equals_its_structured_twin() -> None:
    """A binary-mode record becomes the same event as the same event sent structured."""
    from_binary, from_structured = decode_builtin(binary()), decode_builtin(structured())
    assert from_binary.entity == from_structured.entity
    assert (
        from_binary.fields == from_structured.fields == {"name": "Ada", "email": "ada@example.com"}
    )
    assert (from_binary.id, from_binary.sequence, from_binary.time) == (
        from_structured.id,
        from_structured.sequence,
        from_structured.time,
    )
    assert from_binary.customer_external_id == "cus_1"
    assert from_binary.action is Action.UPSERT
    assert from_binary.entity.kind is EntityKind.CONTACT


def test_binary_mode_event_keeps_the_record_as_it_arrived() -> None:
    """The event refers to the original record (a dead letter must hold what came)."""
    record = binary()
    assert decode_builtin(record).record is record


def test_content_mode_follows_the_binding() -> None:
    """ce_specversion means binary; a cloudevents content type means structured or batch."""
    assert content_mode(binary()) == "binary"
    assert content_mode(structured()) == "structured"
    assert content_mode(structured("application/cloudevents+json; charset=utf-8")) == "structured"
    assert content_mode(structured("application/cloudevents-batch+json")) == "batch"


def test_batch_mode_is_dead_lettered() -> None:
    """A CloudEvents batch is refused with its own reason."""
    assert reason_of(structured("application/cloudevents-batch+json")) == "cloudevents_batch"


def test_binary_mode_without_required_attribute_is_not_a_cloudevent() -> None:
    """A binary-mode record without ce_id is not a CloudEvent."""
    attributes = {k: v for k, v in ATTRIBUTES.items() if k != "id"}
    assert reason_of(binary(attributes)) == "not_cloudevent"


def test_binary_mode_data_of_another_content_type_is_refused() -> None:
    """Data that is not JSON cannot carry fields."""
    assert reason_of(binary(data=b"<xml/>", content_type="application/xml")) == "invalid_field"


def test_binary_mode_header_that_is_not_utf8_is_refused() -> None:
    """A ce_ header must be UTF-8 text."""
    record = binary(extra=(("ce_traceparent", b"\xff\xfe"),))
    assert reason_of(record) == "not_cloudevent"


def test_binary_mode_value_that_is_not_json_is_refused() -> None:
    """Broken JSON in binary mode is invalid_json, as in structured mode."""
    assert reason_of(binary(data=b"{nope")) == "invalid_json"


def test_read_cloudevent_gives_the_structured_form() -> None:
    """Headers become attributes, content-type becomes datacontenttype, the value becomes data."""
    document = read_cloudevent(binary())
    assert document["subject"] == "con_1"
    assert document["data"] == DATA
    assert document["datacontenttype"] == "application/json"


def test_binary_tombstone_is_still_a_delete_of_the_key() -> None:
    """A null value is a tombstone whatever the headers say."""
    record = RecordRef(
        topic="crm", partition=0, offset=9, key=b"cus_9", value=None, headers=(("ce_id", b"x"),)
    )
    event = decode_builtin(record)
    assert event.action is Action.DELETE
    assert event.entity.external_id == "cus_9"


def test_binary_mode_empty_value_is_an_event_without_data() -> None:
    """A binary-mode delete carries no data: an empty value, not a tombstone."""
    attributes = {**ATTRIBUTES, "type": "contact.deleted"}
    record = binary(attributes, data=b"", content_type=None)
    with pytest.raises(InvalidEventError) as caught:
        decode_builtin(record)
    # A contact delete still needs its customer (data.customer): refused for that, not for JSON.
    assert caught.value.reason == "missing_customer"
    customer = binary({**attributes, "type": "customer.deleted", "subject": "cus_1"}, data=b"")
    assert decode_builtin(customer).action is Action.DELETE
