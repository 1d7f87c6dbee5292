"""The mapping file: every mistake is found at load time and named by file, line and field;
a mapped CloudEvents topic; topics the file does not name keep the built-in contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon import cli
from daemon.errors import ConfigError, MappingFileError
from daemon.events import Action, EntityKind, Event, RecordRef
from daemon.formats import Skip
from daemon.formats.mapping import load_mapping, mapping_for, parse_mapping


def problems(text: str) -> list[str]:
    with pytest.raises(MappingFileError) as caught:
        parse_mapping(text, "m.yaml")
    return caught.value.problems


def test_unknown_pivotal_field_is_named_with_its_line() -> None:
    """A field Pivotal does not have is refused, with the file, line and field path."""
    found = problems(
        "topics:\n"
        "  t:\n"
        "    format: debezium\n"
        "    kind: customer\n"
        "    id: id\n"
        "    fields:\n"
        "      name: company\n"
        "      revenue: arr\n"
    )
    assert len(found) == 1
    assert found[0].startswith("m.yaml:8: topics.t.fields.revenue: not a customer field")


def test_every_problem_is_reported_at_once() -> None:
    """Bad expression, bad constant, bad transform, unknown key, missing customer: all listed."""
    found = problems(
        "topics:\n"
        "  t:\n"
        "    format: debezium\n"
        "    kind: contact\n"
        "    id: 'a.['\n"
        "    colour: blue\n"
        "    fields:\n"
        "      is_primary: {constant: 'yes'}\n"
        "      email: {from: mail, transform: [shout]}\n"
    )
    text = "\n".join(found)
    assert "m.yaml:5: topics.t.id: not a JMESPath expression" in text
    assert "m.yaml:6: topics.t.colour: unknown key" in text
    assert "m.yaml:8: topics.t.fields.is_primary.constant: expected a boolean" in text
    assert "m.yaml:9: topics.t.fields.email.transform: 'shout' is not one of" in text
    assert "topics.t.customer: is required for a contact" in text


def test_format_and_kind_are_checked() -> None:
    """An unknown format or kind is named."""
    text = "\n".join(problems("topics:\n  t:\n    format: avro\n    kind: lead\n    id: x\n"))
    assert "m.yaml:3: topics.t.format: expected cloudevents or debezium" in text
    assert "m.yaml:4: topics.t.kind: expected one of customer, contact, onboarding" in text


def test_yaml_syntax_error_names_the_line() -> None:
    """Broken YAML is reported with its line."""
    assert problems("topics:\n  t: [\n")[0].startswith("m.yaml:3:")


def test_field_needs_exactly_one_source() -> None:
    """A field rule with both `from` and `constant` is refused."""
    found = problems(
        "topics:\n  t:\n    format: debezium\n    kind: customer\n    id: id\n"
        "    fields:\n      plan: {from: p, constant: x}\n"
    )
    assert "exactly one of `from` and `constant`" in found[0]


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    """A missing file is one problem naming the file."""
    with pytest.raises(MappingFileError) as caught:
        load_mapping(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(caught.value)


def test_mapping_for_refuses_topics_not_consumed(tmp_path: Path) -> None:
    """A mapped topic the daemon does not consume stops start-up, naming the variable."""
    path = tmp_path / "m.yaml"
    path.write_text("topics:\n  crm.a:\n    format: cloudevents\n")
    assert mapping_for(["crm.a", "crm.b"], path).topics == {}
    with pytest.raises(ConfigError) as caught:
        mapping_for(["crm.b"], path)
    assert caught.value.variable == "PIVOTAL_SYNC_MAPPING_FILE"
    assert "crm.a" in str(caught.value)


def test_mapping_for_bad_file_is_a_config_error(tmp_path: Path) -> None:
    """A bad file is a ConfigError (exit 2) carrying every problem."""
    path = tmp_path / "m.yaml"
    path.write_text("topics:\n  crm.a:\n    format: cloudevents\n    kind: x\n")
    with pytest.raises(ConfigError) as caught:
        mapping_for(["crm.a"], path)
    assert f"{path}:4: topics.crm.a.kind" in str(caught.value)


CE_MAPPING = """
topics:
  hubspot.companies:
    format: cloudevents
    kind: customer
    id: data.companyId
    delete_when: "type == 'company.deletion'"
    skip_when: ["data.archived"]
    fields:
      name: data.properties.name
      domain: {from: data.properties.domain, transform: [lowercase]}
"""


def ce_record(
    event_type: str, data: dict[str, object], topic: str = "hubspot.companies"
) -> RecordRef:
    value = {
        "specversion": "1.0",
        "id": "e1",
        "source": "hubspot",
        "type": event_type,
        "data": data,
    }
    return RecordRef(topic=topic, partition=0, offset=1, key=None, value=json.dumps(value).encode())


def test_mapped_cloudevents_topic_reads_foreign_shapes() -> None:
    """A producer's own CloudEvents shape maps onto Pivotal fields and actions."""
    mapping = parse_mapping(CE_MAPPING, "m.yaml")
    data = {"companyId": 99, "properties": {"name": "Borealis", "domain": "B.IO"}}
    upsert = mapping.decode(ce_record("company.propertyChange", data))
    assert isinstance(upsert, Event)
    assert upsert.action is Action.UPSERT
    assert upsert.entity.kind is EntityKind.CUSTOMER
    assert upsert.entity.external_id == "99"
    assert upsert.fields == {"name": "Borealis", "domain": "b.io"}
    delete = mapping.decode(ce_record("company.deletion", {"companyId": 99}))
    assert isinstance(delete, Event)
    assert delete.action is Action.DELETE
    skipped = mapping.decode(ce_record("company.propertyChange", {**data, "archived": True}))
    assert isinstance(skipped, Skip)
    assert skipped.reason == "filtered"


def test_topics_not_in_the_file_speak_the_builtin_contract() -> None:
    """The built-in CloudEvents contract is the default mapping."""
    mapping = parse_mapping(CE_MAPPING, "m.yaml")
    value = {
        "specversion": "1.0",
        "id": "e2",
        "source": "crm",
        "type": "customer.created",
        "subject": "cus_1",
        "data": {"name": "Aurora"},
    }
    record = RecordRef(
        topic="crm.customers", partition=0, offset=1, key=b"cus_1", value=json.dumps(value).encode()
    )
    decoded = mapping.decode(record)
    assert isinstance(decoded, Event)
    assert decoded.fields == {"name": "Aurora"}


def test_run_with_a_bad_mapping_file_stops_start_up_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pivotal-sync run` refuses a bad mapping before connecting to anything, naming the
    variable, the file and the line."""
    path = tmp_path / "m.yaml"
    path.write_text("topics:\n  crm.customers:\n    format: debezium\n    kind: lead\n")
    monkeypatch.setenv("PIVOTAL_API_KEY", "pk_test_unused")
    monkeypatch.setenv("PIVOTAL_SYNC_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("PIVOTAL_SYNC_MAPPING_FILE", str(path))
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "PIVOTAL_SYNC_MAPPING_FILE" in err
    assert f"{path}:4: topics.crm.customers.kind" in err
    assert "pk_test_unused" not in err


@pytest.mark.parametrize(
    ("value", "skipped"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (0, True),
        (True, True),
        ("x", True),
        ([0], True),
    ],
)
def test_skip_when_follows_jmespath_truthiness(value: object, skipped: bool) -> None:
    """null, false and empty values do not match; 0 does (JMESPath, not Python, truthiness)."""
    mapping = parse_mapping(
        "topics:\n  t:\n    format: cloudevents\n    kind: customer\n    id: data.id\n"
        "    skip_when: [data.flag]\n    fields:\n      name: data.name\n",
        "m.yaml",
    )
    data = {"id": "c1", "name": "A", "flag": value}
    value_bytes = json.dumps(
        {"specversion": "1.0", "id": "e", "source": "s", "type": "t", "data": data}
    ).encode()
    decoded = mapping.decode(
        RecordRef(topic="t", partition=0, offset=0, key=None, value=value_bytes)
    )
    assert isinstance(decoded, Skip) is skipped
