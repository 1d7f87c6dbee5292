"""`pivotal-sync import`: rows → validated changes → events of the contract, ids from content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.checkpoints import EventOutcome
from daemon.events import EntityKind, RecordRef, parse_record
from daemon.tools.importing import (
    Change,
    ImportFileError,
    build_record,
    event_id,
    outcome_counts,
    read_changes,
)

HEADER = (
    "external_id,name,slug,domain,status,plan,contact_external_id,contact_name,contact_email,"
    "onboarding_external_id,onboarding_phase"
)


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def csv_file(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    return write(tmp_path, "customers.csv", header, *rows)


def test_a_row_with_contact_and_onboarding_becomes_three_changes_customer_first(
    tmp_path: Path,
) -> None:
    plan = read_changes(
        csv_file(
            tmp_path, "c1,Aurora,aurora,aurora.example,onboarding,growth,k1,Ann,ann@a.io,o1,review"
        )
    )
    assert [(c.kind, c.external_id) for c in plan.changes] == [
        (EntityKind.CUSTOMER, "c1"),
        (EntityKind.CONTACT, "k1"),
        (EntityKind.ONBOARDING, "o1"),
    ]
    assert plan.changes[0].fields == {
        "name": "Aurora",
        "slug": "aurora",
        "domain": "aurora.example",
        "status": "onboarding",
        "plan": "growth",
    }
    assert plan.changes[1].fields == {"name": "Ann", "email": "ann@a.io"}
    assert all(c.customer_external_id == "c1" for c in plan.changes)
    assert plan.rows_read == 1
    assert plan.rejected == []


def test_empty_cells_are_left_out_rather_than_sent_as_empty_strings(tmp_path: Path) -> None:
    plan = read_changes(csv_file(tmp_path, "c1,Aurora,,,,,,,,,"))
    assert [c.fields for c in plan.changes] == [{"name": "Aurora"}]


def test_integer_boolean_list_and_object_cells_are_converted(tmp_path: Path) -> None:
    header = (
        "external_id,name,mrr,metadata,"
        "contact_external_id,contact_name,contact_is_primary,contact_labels"
    )
    plan = read_changes(
        csv_file(tmp_path, 'c1,A,1500,"{""tier"": 2}",k1,Ann,yes,billing;tech', header=header)
    )
    customer, contact = plan.changes
    assert customer.fields == {"name": "A", "mrr": 1500, "metadata": {"tier": 2}}
    assert contact.fields == {"name": "Ann", "is_primary": True, "labels": ["billing", "tech"]}


def test_bad_rows_are_reported_with_their_line_numbers_and_the_good_rows_go_on(
    tmp_path: Path,
) -> None:
    plan = read_changes(
        csv_file(
            tmp_path,
            "c1,Aurora,aurora,,,,,,,,",
            ",No Id,noid,,,,,,,,",  # line 3
            'c3,"Two',  # a quoted cell over two lines: lines 4-5
            'Lines",c3,,bogus,,,,,,',
            "c4,Delta,delta,,,,k4,Dee,not-an-email,,",  # line 6
            "c5,Echo,echo,,,,,,,o5,launched",  # line 7
            "c6,Foxtrot,foxtrot",  # line 8: too few cells
            "c7,Golf,golf,,,,,,,,",
        )
    )
    assert [c.external_id for c in plan.changes] == ["c1", "c7"]
    rejected = {r.line: r.reasons for r in plan.rejected}
    assert set(rejected) == {3, 4, 6, 7, 8}
    assert rejected[3] == ("external_id is missing",)
    assert "status" in rejected[4][0]
    assert "contact email" in rejected[6][0]
    assert "onboarding phase" in rejected[7][0]
    assert "expected 11 columns, got 3" in rejected[8][0]
    assert str(plan.rejected[0]).startswith("customers.csv:3: ")


def test_a_customer_without_a_name_is_rejected_because_pivotal_requires_one(
    tmp_path: Path,
) -> None:
    plan = read_changes(csv_file(tmp_path, "c1,,slug,,,,,,,,"))
    assert plan.changes == []
    assert plan.rejected[0].reasons == ("name is required",)


def test_unknown_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    plan = read_changes(csv_file(tmp_path, "c1,A,red", header="external_id,name,colour"))
    assert plan.changes[0].fields == {"name": "A"}
    assert plan.ignored_columns == {"colour"}


def test_the_same_row_gives_the_same_event_id_on_every_run(tmp_path: Path) -> None:
    row = "c1,Aurora,aurora,aurora.example,onboarding,growth,k1,Ann,ann@a.io,o1,review"
    first = read_changes(csv_file(tmp_path, row))
    second = read_changes(csv_file(tmp_path, row))
    assert [c.event_id for c in first.changes] == [c.event_id for c in second.changes]
    assert all(c.event_id.startswith("import:") for c in first.changes)
    assert len({c.event_id for c in first.changes}) == 3


def test_a_changed_row_gives_a_new_id_only_to_the_entity_that_changed(tmp_path: Path) -> None:
    before = read_changes(csv_file(tmp_path, "c1,Aurora,aurora,,active,,k1,Ann,ann@a.io,,"))
    after = read_changes(csv_file(tmp_path, "c1,Aurora,aurora,,at_risk,,k1,Ann,ann@a.io,,"))
    assert before.changes[0].event_id != after.changes[0].event_id
    assert before.changes[1].event_id == after.changes[1].event_id


def test_column_order_does_not_change_the_event_id(tmp_path: Path) -> None:
    one = read_changes(write(tmp_path, "a.csv", "external_id,name,slug", "c1,A,a"))
    two = read_changes(write(tmp_path, "b.csv", "slug,name,external_id", "a,A,c1"))
    assert one.changes[0].event_id == two.changes[0].event_id


def test_the_id_covers_kind_entity_customer_and_fields() -> None:
    base = event_id(EntityKind.CONTACT, "k1", "c1", {"name": "Ann"})
    assert base == event_id(EntityKind.CONTACT, "k1", "c1", {"name": "Ann"})
    assert base != event_id(EntityKind.ONBOARDING, "k1", "c1", {"name": "Ann"})
    assert base != event_id(EntityKind.CONTACT, "k2", "c1", {"name": "Ann"})
    assert base != event_id(EntityKind.CONTACT, "k1", "c2", {"name": "Ann"})
    assert base != event_id(EntityKind.CONTACT, "k1", "c1", {"name": "Bob"})


def test_a_customer_repeated_identically_is_imported_once_with_all_its_contacts(
    tmp_path: Path,
) -> None:
    plan = read_changes(
        csv_file(
            tmp_path,
            "c1,Aurora,aurora,,,,k1,Ann,ann@a.io,,",
            "c1,Aurora,aurora,,,,k2,Bob,bob@a.io,,",
        )
    )
    assert [(c.kind.value, c.external_id) for c in plan.changes] == [
        ("customer", "c1"),
        ("contact", "k1"),
        ("contact", "k2"),
    ]


def test_an_entity_repeated_with_different_values_is_rejected_naming_the_first_line(
    tmp_path: Path,
) -> None:
    plan = read_changes(csv_file(tmp_path, "c1,Aurora,aurora,,,,,,,,", "c1,Other,aurora,,,,,,,,"))
    assert [c.external_id for c in plan.changes] == ["c1"]
    assert plan.rejected[0].line == 3
    assert "already appears with different values at customers.csv:2" in plan.rejected[0].reasons[0]


def test_a_slug_used_by_two_customers_is_rejected_because_the_daemon_would_merge_them(
    tmp_path: Path,
) -> None:
    plan = read_changes(csv_file(tmp_path, "c1,A,same,,,,,,,,", "c2,B,same,,,,,,,,"))
    assert [c.external_id for c in plan.changes] == ["c1"]
    assert "slug 'same' is already used by c1" in plan.rejected[0].reasons[0]


def test_json_lines_take_typed_values_and_nested_children(tmp_path: Path) -> None:
    rows = [
        {
            "external_id": "c1",
            "name": "Aurora",
            "mrr": 10,
            "contacts": [{"external_id": "k1", "name": "Ann", "is_primary": True}],
            "onboarding": {"external_id": "o1", "phase": "review"},
        },
        {"external_id": "c2", "name": "Beta", "mrr": "ten"},
    ]
    path = write(
        tmp_path, "customers.jsonl", json.dumps(rows[0]), "", "{broken", json.dumps(rows[1]), "[1]"
    )
    plan = read_changes(path)
    assert [(c.kind.value, c.external_id) for c in plan.changes] == [
        ("customer", "c1"),
        ("contact", "k1"),
        ("onboarding", "o1"),
    ]
    assert plan.changes[1].fields == {"name": "Ann", "is_primary": True}
    rejected = {r.line: r.reasons[0] for r in plan.rejected}
    assert rejected[3].startswith("not valid JSON")
    assert rejected[4].startswith("mrr: expected an integer")
    assert rejected[5] == "expected a JSON object"


def test_separate_contact_and_onboarding_files_follow_their_customer(tmp_path: Path) -> None:
    customers = csv_file(tmp_path, "c1,A,a,,,,,,,,", "c2,,b,,,,,,,,")
    contacts = write(
        tmp_path,
        "contacts.csv",
        "customer_external_id,external_id,name,email",
        "c1,k1,Ann,ann@a.io",
        "c2,k2,Bob,bob@b.io",
        ",k3,Cy,cy@c.io",
    )
    onboardings = write(
        tmp_path, "onboardings.csv", "customer_external_id,external_id,phase", "c1,o1,launch"
    )
    plan = read_changes(customers, contacts=contacts, onboardings=onboardings)
    assert [(c.kind.value, c.external_id) for c in plan.changes] == [
        ("customer", "c1"),
        ("contact", "k1"),
        ("onboarding", "o1"),
    ]
    rejected = {(r.source, r.line): r.reasons[0] for r in plan.rejected}
    assert rejected[("contacts.csv", 3)] == "its customer c2 was rejected (customers.csv:3)"
    assert rejected[("contacts.csv", 4)] == "customer_external_id is missing"


def test_a_contact_of_a_customer_not_in_the_file_is_imported_for_an_existing_customer(
    tmp_path: Path,
) -> None:
    contacts = write(tmp_path, "contacts.csv", "customer_external_id,external_id,name", "c9,k1,A")
    plan = read_changes(None, contacts=contacts)
    assert [(c.kind.value, c.customer_external_id) for c in plan.changes] == [("contact", "c9")]


def test_an_unknown_file_format_or_a_missing_file_stops_the_import(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="unknown format"):
        read_changes(write(tmp_path, "customers.xlsx", "x"))
    with pytest.raises(ImportFileError, match="no such file"):
        read_changes(tmp_path / "missing.csv")


def test_a_record_is_keyed_by_its_customer_and_parses_as_the_daemon_parses_it() -> None:
    change = Change(
        kind=EntityKind.CONTACT,
        external_id="k1",
        customer_external_id="c1",
        fields={"name": "Ann"},
        source="contacts.csv",
        line=2,
    )
    record = build_record(change)
    assert record.key == b"c1"
    assert ("pivotal-sync-import", b"contacts.csv") in record.headers
    event = parse_record(
        RecordRef(topic="t", partition=0, offset=0, key=record.key, value=record.value)
    )
    assert event.id == change.event_id
    assert event.type == "contact.created"
    assert event.customer_external_id == "c1"
    assert dict(event.fields) == {"name": "Ann"}


def test_outcome_counts_split_successes_by_kind_and_dead_letters_by_reason() -> None:
    def change(kind: EntityKind, ext: str) -> Change:
        return Change(
            kind=kind,
            external_id=ext,
            customer_external_id="c",
            fields={"name": ext},
            source="f",
            line=1,
        )

    changes = [
        change(EntityKind.CUSTOMER, "a"),
        change(EntityKind.CUSTOMER, "b"),
        change(EntityKind.CONTACT, "c"),
        change(EntityKind.ONBOARDING, "d"),
    ]
    outcomes = {
        changes[0].event_id: EventOutcome(outcome="sent", kind="customer"),
        changes[1].event_id: EventOutcome(outcome="coalesced", kind="customer"),
        changes[2].event_id: EventOutcome(
            outcome="dead_lettered", kind="contact", reason="http_400", attempts=1
        ),
    }
    succeeded, dead, by_outcome, pending, requests = outcome_counts(outcomes, changes)
    assert succeeded == {"customer": 2, "contact": 0, "onboarding": 0}
    assert dead == {"http_400": 1}
    assert by_outcome == {"sent": 1, "coalesced": 1, "dead_lettered": 1}
    assert pending == 1
    assert requests == 2
