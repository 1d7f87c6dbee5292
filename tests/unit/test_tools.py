"""Operator commands: argument parsing, times, refusals, redrive and replay choices, rendering."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from daemon import cli
from daemon.checkpoints import DeadLetterRow, EventOutcome
from daemon.events import EntityKey, EntityKind, RecordRef
from daemon.outcomes import DeadLetter
from daemon.record_reader import unavailable
from daemon.tools.common import ProgressBar, parse_time
from daemon.tools.dead_letters import (
    REDRIVE_HEADER,
    DeadLetterStatus,
    plan_retry,
    redrive_record,
    state_of,
)
from daemon.tools.replay import ReplayReport, choose, replay_record
from daemon.tools.status import PartitionLag, StatusReport, quota_from, render

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


# -- times ------------------------------------------------------------------------------------


def test_a_time_is_rfc3339_a_date_now_or_an_age() -> None:
    assert parse_time("2026-11-26T10:00:00Z") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_time("2026-11-26T11:00:00+01:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_time("2026-11-26") == datetime(2026, 11, 26, tzinfo=UTC)
    assert parse_time("now", NOW) == NOW
    assert parse_time("15m", NOW) == NOW - timedelta(minutes=15)
    assert parse_time("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_time("1.5d", NOW) == NOW - timedelta(hours=36)


def test_a_naive_time_is_taken_as_utc() -> None:
    assert parse_time("2026-11-26 10:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)


def test_a_time_that_is_not_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse("replay", "--from", "yesterday-ish")
    assert exit_.value.code == 2
    assert "is not a time" in capsys.readouterr().err


# -- argument parsing -------------------------------------------------------------------------


def test_import_takes_a_file_and_optional_children_files_and_flags() -> None:
    args = parse(
        "import", "c.csv", "--contacts", "k.csv", "--onboardings", "o.jsonl", "--wait",
        "--wait-timeout", "30", "--metrics-url", "http://d:9000", "--json",
    )  # fmt: skip
    assert str(args.file) == "c.csv"
    assert str(args.contacts) == "k.csv"
    assert str(args.onboardings) == "o.jsonl"
    assert args.wait
    assert args.json
    assert args.wait_timeout == 30.0
    assert args.metrics_url == "http://d:9000"


def test_dead_letters_list_takes_every_filter() -> None:
    args = parse(
        "dead-letters", "list", "--reason", "http_400", "--status", "400", "--entity", "c1",
        "--since", "2026-11-26", "--state", "open", "--limit", "5",
    )  # fmt: skip
    assert (args.reason, args.status, args.entity, args.state, args.limit) == (
        "http_400",
        400,
        "c1",
        "open",
        5,
    )
    assert args.since == datetime(2026, 11, 26, tzinfo=UTC)


def test_dead_letters_retry_takes_ids_filters_and_a_dry_run() -> None:
    args = parse("dead-letters", "retry", "3", "7", "--reason", "http_400", "--dry-run")
    assert args.ids == [3, 7]
    assert args.reason == "http_400"
    assert args.dry_run
    assert args.max_redrives == 3


def test_replay_needs_a_start_and_takes_an_end_an_entity_and_force() -> None:
    args = parse(
        "replay", "--from", "2026-11-26T10:00:00Z", "--to", "now", "--entity", "c1", "--force"
    )
    assert args.from_ == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert args.entity == "c1"
    assert args.force
    with pytest.raises(SystemExit):
        parse("replay")


def test_status_takes_a_metrics_url_and_json() -> None:
    args = parse("status", "--metrics-url", "http://127.0.0.1:9000", "--json")
    assert args.metrics_url == "http://127.0.0.1:9000"
    assert args.json


def test_purge_without_a_filter_is_refused_before_touching_anything() -> None:
    assert cli.main(["dead-letters", "purge"]) == 2
    assert cli.main(["dead-letters", "purge", "--all"]) == 2


def test_retry_without_ids_filters_or_all_is_refused() -> None:
    assert cli.main(["dead-letters", "retry"]) == 2


def test_import_without_any_file_is_refused() -> None:
    assert cli.main(["import"]) == 2


def test_a_missing_database_url_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PIVOTAL_SYNC_DATABASE_URL", raising=False)
    assert cli.main(["status"]) == 2
    assert "PIVOTAL_SYNC_DATABASE_URL" in capsys.readouterr().err


# -- redrive ----------------------------------------------------------------------------------


def dead_row(
    id: int, *, event_id: str | None = None, retry_count: int = 0, offset: int = 0
) -> DeadLetterRow:
    return DeadLetterRow(
        id=id,
        event_id=event_id or f"evt_{id}",
        dead_letter=DeadLetter(reason="http_400", detail="no", status=400),
        record=RecordRef(
            topic="t",
            partition=0,
            offset=offset,
            key=b"c1",
            value=b"{}",
            headers=(("trace", b"x"), (REDRIVE_HEADER, b"1")),
        ),
        entity=EntityKey(kind=EntityKind.CUSTOMER, external_id="c1"),
        times_seen=1,
        first_seen=NOW,
        last_seen=NOW,
        retried_at=None,
        retry_count=retry_count,
    )


def test_a_dead_letter_is_open_retrying_or_resolved_by_its_checkpoint() -> None:
    assert state_of(EventOutcome(outcome="dead_lettered", kind="customer")) == "open"
    assert state_of(None) == "retrying"
    assert state_of(EventOutcome(outcome="sent", kind="customer")) == "resolved"


def test_retry_sends_only_open_retriable_letters_in_stream_order() -> None:
    plan = plan_retry(
        [
            DeadLetterStatus(row=dead_row(1, offset=9), state="open"),
            DeadLetterStatus(row=dead_row(2, offset=3), state="open"),
            DeadLetterStatus(row=dead_row(3), state="resolved"),
            DeadLetterStatus(row=dead_row(4), state="retrying"),
            DeadLetterStatus(row=dead_row(5, event_id="record:t:0:5"), state="open"),
            DeadLetterStatus(row=dead_row(6, retry_count=3), state="open"),
        ],
        max_redrives=3,
    )
    assert [r.id for r in plan.send] == [2, 1]
    assert {r.id: why for r, why in plan.skipped} == {
        3: "already succeeded",
        4: "a redrive is still in flight",
        5: "not a valid event; fix the producer and publish it again",
        6: "redriven 3 times already (the limit)",
    }


def test_a_dead_letter_whose_record_kafka_no_longer_had_is_not_redriven_as_a_tombstone() -> None:
    row = dead_row(1)
    gone = dataclasses.replace(row, record=unavailable(("t", 0, 7)))
    plan = plan_retry([DeadLetterStatus(row=gone, state="open")])
    assert plan.send == []
    assert [why for _, why in plan.skipped] == [
        "its record was gone from Kafka; publish the event again"
    ]


def test_a_redriven_record_is_the_original_with_one_redrive_header() -> None:
    record = redrive_record(dead_row(1), attempt=2)
    assert (record.key, record.value) == (b"c1", b"{}")
    assert record.headers == (("trace", b"x"), (REDRIVE_HEADER, b"2"))


# -- replay -----------------------------------------------------------------------------------


def event_record(offset: int, event_id: str, *, partition: int = 0) -> RecordRef:
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "crm",
        "type": "customer.updated",
        "subject": "c1",
        "data": {"name": "A"},
    }
    value = json.dumps(event).encode()
    return RecordRef(topic="t", partition=partition, offset=offset, key=b"c1", value=value)


def test_replay_skips_finished_events_repeats_and_non_events_unless_forced() -> None:
    records = [
        event_record(3, "e2"),
        event_record(1, "e1"),
        event_record(2, "e1"),
        RecordRef(topic="t", partition=0, offset=4, key=b"c1", value=b"{broken"),
    ]
    report = ReplayReport()
    chosen = choose(records, {"e1"}, force=False, report=report)
    assert [(r.offset, i) for r, i in chosen] == [(3, "e2")]
    assert (report.already_finished, report.repeated, report.unparseable) == (1, 1, 1)
    forced = choose(records, {"e1"}, force=True, report=ReplayReport())
    assert [(r.offset, i) for r, i in forced] == [(1, "e1"), (3, "e2")]


def test_a_replayed_record_names_where_it_came_from() -> None:
    record = replay_record(event_record(7, "e1", partition=2))
    assert record.headers[-1] == ("pivotal-sync-replay", b"t:2:7")


# -- status and progress ----------------------------------------------------------------------


def test_quota_is_read_from_the_daemons_ratelimit_gauges() -> None:
    requests = "pivotal_sync_api_requests_total"
    quota = quota_from(
        {
            "pivotal_sync_ratelimit_limit": 60.0,
            "pivotal_sync_ratelimit_remaining": 12.0,
            "pivotal_sync_ratelimit_window_seconds": 60.0,
            requests + '{endpoint="customers",method="POST",status_class="2xx"}': 5,
            requests + '{endpoint="contacts",method="POST",status_class="2xx"}': 2,
            'pivotal_sync_paused{reason="auth"}': 1.0,
            'pivotal_sync_paused{reason="server_errors"}': 0.0,
        }
    )
    assert quota["limit"] == 60.0
    assert quota["remaining"] == 12.0
    assert quota["requests_total"] == 7
    assert quota["paused"] == ["auth"]


def test_status_says_quota_unknown_when_no_daemon_answers_and_sums_the_lag() -> None:
    report = StatusReport(
        topic="crm.customers",
        group="pivotal-sync",
        partitions=[
            PartitionLag(partition=0, committed=10, high_watermark=15, lag=5),
            PartitionLag(partition=1, committed=None, high_watermark=3, lag=3),
        ],
        dead_letters={"http_400": 2},
        dead_letter_states={"open": 1, "retrying": 0, "resolved": 1},
    )
    text = render(report, NOW)
    assert "quota\n  unknown" in text
    assert "total lag 8" in text
    assert "2 in total: 1 open, 0 retrying, 1 resolved" in text
    assert report.as_json()["total_lag"] == 8


def test_the_progress_bar_writes_a_line_now_and_then_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar("published", stream)
    bar(1, 4)
    bar(2, 4)  # too soon for another line
    bar(4, 4)  # the last one is always written
    assert stream.getvalue().splitlines() == [
        "published  [########----------------------] 1/4  25%",
        "published  [##############################] 4/4 100%",
    ]
