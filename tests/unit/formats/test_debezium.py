"""Debezium JSON through a mapping: creates, updates of only what changed, deletes, tombstones,
the envelope with and without schema, and the source position as the sequence."""

from __future__ import annotations

import json
from typing import Any

import pytest

from daemon.errors import InvalidEventError
from daemon.events import INVALID_EVENT_REASONS, Action, EntityKey, EntityKind, Event, RecordRef
from daemon.formats import Skip
from daemon.formats.debezium import position
from daemon.formats.mapping import MappingFile, parse_mapping

MAPPING = """
topics:
  crm.public.accounts:
    format: debezium
    kind: customer
    id: account_id
    skip_when: ["is_test"]
    fields:
      name: {from: company_name, transform: [trim]}
      domain: {from: website, transform: [trim, lowercase]}
      status: {from: stage, default: onboarding}
      plan: {constant: growth}
  crm.public.people:
    format: debezium
    kind: contact
    id: person_id
    customer: account_id
    fields:
      name: full_name
      email: {from: email_address, transform: [lowercase]}
"""

ACCOUNT = {"account_id": 7, "company_name": " Aurora ", "website": "Aurora.example", "stage": None}


def change(
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    lsn: int = 1000,
    envelope: bool = False,
    topic: str = "crm.public.accounts",
) -> RecordRef:
    payload = {
        "op": op,
        "before": before,
        "after": after,
        "source": {"connector": "postgresql", "db": "crm", "table": "accounts", "lsn": lsn},
        "ts_ms": 1_764_000_000_000,
    }
    document: Any = {"schema": {"type": "struct"}, "payload": payload} if envelope else payload
    return RecordRef(
        topic=topic, partition=0, offset=lsn, key=b"{}", value=json.dumps(document).encode()
    )


@pytest.fixture(scope="module")
def mapping() -> MappingFile:
    return parse_mapping(MAPPING, "mapping.yaml")


def event(mapping: MappingFile, record: RecordRef) -> Event:
    decoded = mapping.decode(record)
    assert isinstance(decoded, Event)
    return decoded


@pytest.mark.parametrize("op", ["c", "r"])
def test_insert_and_snapshot_read_are_upserts_with_every_mapped_field(
    mapping: MappingFile, op: str
) -> None:
    """c and r create with the mapped, transformed fields; a null becomes the default."""
    created = event(mapping, change(op, None, ACCOUNT))
    assert created.action is Action.UPSERT
    assert created.type == "customer.created"
    assert created.entity == EntityKey(kind=EntityKind.CUSTOMER, external_id="7")
    assert created.fields == {
        "name": "Aurora",
        "domain": "aurora.example",
        "status": "onboarding",
        "plan": "growth",
    }
    assert created.sequence == 1000


def test_envelope_with_schema_reads_the_same(mapping: MappingFile) -> None:
    """schemas.enable=true wraps the change in schema/payload: same event."""
    plain = event(mapping, change("c", None, ACCOUNT))
    wrapped = event(mapping, change("c", None, ACCOUNT, envelope=True))
    assert (wrapped.entity, wrapped.fields, wrapped.sequence) == (
        plain.entity,
        plain.fields,
        plain.sequence,
    )


def test_update_sends_only_the_mapped_fields_that_changed(mapping: MappingFile) -> None:
    """u compares the mapped before and after images."""
    after = {**ACCOUNT, "website": "aurora.io", "notes_internal": "x"}
    updated = event(mapping, change("u", ACCOUNT, after, lsn=2000))
    assert updated.type == "customer.updated"
    assert updated.fields == {"domain": "aurora.io"}
    assert updated.sequence == 2000


def test_update_of_unmapped_columns_is_a_skip(mapping: MappingFile) -> None:
    """A change that touches no mapped field costs no request."""
    after = {**ACCOUNT, "notes_internal": "changed", "website": " AURORA.example"}
    skipped = mapping.decode(change("u", ACCOUNT, after))
    assert isinstance(skipped, Skip)
    assert skipped.reason == "unchanged"


def test_update_without_before_image_sends_every_mapped_field(mapping: MappingFile) -> None:
    """Without REPLICA IDENTITY FULL there is no before image: all mapped fields go."""
    updated = event(mapping, change("u", None, ACCOUNT))
    assert set(updated.fields) == {"name", "domain", "status", "plan"}


def test_delete_uses_the_before_image(mapping: MappingFile) -> None:
    """d deletes the entity the before image names."""
    deleted = event(mapping, change("d", {"account_id": 7}, None))
    assert deleted.action is Action.DELETE
    assert deleted.fields == {}
    assert deleted.entity.external_id == "7"


def test_tombstones_are_skipped(mapping: MappingFile) -> None:
    """A null value (and an enveloped null payload) is log compaction's marker: a skip."""
    bare = RecordRef(topic="crm.public.accounts", partition=0, offset=1, key=b"{}", value=None)
    wrapped = RecordRef(
        topic="crm.public.accounts",
        partition=0,
        offset=2,
        key=b"{}",
        value=b'{"schema": null, "payload": null}',
    )
    for record in (bare, wrapped):
        decoded = mapping.decode(record)
        assert isinstance(decoded, Skip)
        assert decoded.reason == "tombstone"


def test_filter_skips_matching_rows(mapping: MappingFile) -> None:
    """skip_when excludes test accounts."""
    decoded = mapping.decode(change("c", None, {**ACCOUNT, "is_test": True}))
    assert isinstance(decoded, Skip)
    assert decoded.reason == "filtered"


def test_contact_files_under_its_customer(mapping: MappingFile) -> None:
    """A contact's lane is its customer, named by the `customer` expression."""
    person = {"person_id": "p1", "account_id": 7, "full_name": "Ada", "email_address": "ADA@X.IO"}
    contact = event(mapping, change("c", None, person, topic="crm.public.people"))
    assert contact.entity == EntityKey(kind=EntityKind.CONTACT, external_id="p1")
    assert contact.customer_external_id == "7"
    assert contact.fields == {"name": "Ada", "email": "ada@x.io"}


def test_same_change_twice_has_the_same_id(mapping: MappingFile) -> None:
    """A replayed change (a new offset) is a duplicate; a different change is not."""
    first = event(mapping, change("c", None, ACCOUNT))
    replay = event(mapping, change("c", None, ACCOUNT))
    later = event(mapping, change("c", None, ACCOUNT, lsn=1001))
    assert first.id == replay.id != later.id


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"[1]", "not_debezium"),
        (b'{"op": "t", "before": null, "after": null}', "not_debezium"),
        (b'{"op": "c", "before": null, "after": null}', "not_debezium"),
        (b'{"op": "c", "after": {"company_name": "x"}}', "missing_key"),
        (b'{"op": "c", "after": {"account_id": 1, "stage": "nope"}}', "invalid_field"),
    ],
)
def test_broken_records_are_dead_lettered(mapping: MappingFile, value: bytes, reason: str) -> None:
    """Each way a record can fail has its reason."""
    record = RecordRef(topic="crm.public.accounts", partition=0, offset=1, key=None, value=value)
    with pytest.raises(InvalidEventError) as caught:
        mapping.decode(record)
    assert caught.value.reason == reason
    assert reason in INVALID_EVENT_REASONS


def test_position_prefers_lsn_then_binlog_then_timestamp() -> None:
    """PostgreSQL lsn; MySQL file index and position (ts_ms is only to the second there);
    Oracle scn; then the commit time."""
    assert position({"lsn": 5, "ts_ms": 9}) == 5
    later_file = position({"file": "mysql-bin.000004", "pos": 10, "ts_ms": 9})
    earlier_file = position({"file": "mysql-bin.000003", "pos": 99_999, "ts_ms": 9})
    assert later_file is not None
    assert earlier_file is not None
    assert later_file > earlier_file
    assert position({"scn": "8812", "ts_ms": 9}) == 8812
    assert position({"ts_ms": 9}) == 9
    assert position({}) is None
