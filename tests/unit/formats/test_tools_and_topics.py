"""The operator tools with several topics: replay reads each topic with its own format, and the
import refuses a topic the daemon would not read as CloudEvents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.events import RecordRef
from daemon.formats.mapping import parse_mapping
from daemon.tools.importing import check_import_topic
from daemon.tools.replay import ReplayReport, choose, record_event_id
from daemon.tools.status import PartitionLag, StatusReport, render

MAPPING = """
topics:
  crm.public.accounts:
    format: debezium
    kind: customer
    id: account_id
    fields:
      name: company_name
"""


def change(offset: int, lsn: int) -> RecordRef:
    payload = {"op": "c", "after": {"account_id": 7, "company_name": "A"}, "source": {"lsn": lsn}}
    return RecordRef(
        topic="crm.public.accounts",
        partition=0,
        offset=offset,
        key=b'{"account_id": 7}',
        value=json.dumps(payload).encode(),
    )


def test_replay_reads_a_debezium_topic_with_its_mapping() -> None:
    """Ids come from the topic's format: the same change twice is one event to replay."""
    mapping = parse_mapping(MAPPING, "m.yaml")
    records = [change(1, 100), change(2, 100), change(3, 200)]
    assert record_event_id(records[0]) is None  # not a CloudEvent: the built-in contract refuses
    first = record_event_id(records[0], mapping)
    report = ReplayReport()
    chosen = choose(records, {first or ""}, force=False, report=report, mapping=mapping)
    assert [r.offset for r, _ in chosen] == [3]
    assert (report.already_finished, report.repeated) == (1, 1)


def test_import_needs_a_consumed_topic_with_the_builtin_contract(tmp_path: Path) -> None:
    """The import's topic must be consumed, and not one the mapping reads in another shape."""
    mapping = tmp_path / "m.yaml"
    mapping.write_text(MAPPING)
    base = {"PIVOTAL_SYNC_MAPPING_FILE": str(mapping)}
    check_import_topic(
        load_settings({**base, "PIVOTAL_SYNC_KAFKA_TOPICS": "crm.customers,crm.public.accounts"})
    )
    not_consumed = {**base, "PIVOTAL_SYNC_KAFKA_TOPICS": "crm.public.accounts"}
    with pytest.raises(ConfigError, match="not in PIVOTAL_SYNC_KAFKA_TOPICS"):
        check_import_topic(load_settings(not_consumed))
    mapped = {
        **base,
        "PIVOTAL_SYNC_KAFKA_TOPIC": "crm.public.accounts",
        "PIVOTAL_SYNC_KAFKA_TOPICS": "crm.public.accounts",
    }
    with pytest.raises(ConfigError, match="its own mapping"):
        check_import_topic(load_settings(mapped))


def test_topics_setting_replaces_the_single_topic() -> None:
    """KAFKA_TOPICS lists the topics; without it KAFKA_TOPIC alone is consumed."""
    assert load_settings({}).topics == ("crm.customers",)
    assert load_settings({"PIVOTAL_SYNC_KAFKA_TOPIC": "a"}).topics == ("a",)
    assert load_settings({"PIVOTAL_SYNC_KAFKA_TOPICS": " a, b "}).topics == ("a", "b")
    for bad in ("a,,b", "a,a"):
        with pytest.raises(ConfigError) as caught:
            load_settings({"PIVOTAL_SYNC_KAFKA_TOPICS": bad})
        assert caught.value.variable == "PIVOTAL_SYNC_KAFKA_TOPICS"


def test_status_names_the_topic_of_each_partition_when_there_are_several() -> None:
    """With several topics the lag lines say which topic a partition belongs to."""
    report = StatusReport(
        topic="crm.public.accounts, crm.public.people",
        group="pivotal-sync",
        partitions=[
            PartitionLag(
                topic="crm.public.accounts", partition=0, committed=4, high_watermark=6, lag=2
            ),
            PartitionLag(
                topic="crm.public.people", partition=0, committed=1, high_watermark=2, lag=1
            ),
        ],
    )
    text = render(report)
    # The first line names the versions (tests/unit/test_version.py).
    assert (
        text.splitlines()[1] == "topics crm.public.accounts, crm.public.people · group pivotal-sync"
    )
    assert "  crm.public.people [0] committed        1" in text
    assert "total lag 3" in text
