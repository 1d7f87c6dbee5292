"""The product's promise, end to end: ordered, coalesced, never lost, never duplicated.

Every test publishes a generated CRM stream (≥ 2,000 events over 300 customers: creates,
repeated updates, contacts, onboardings, deletes, 20 malformed records), runs the real daemon
against it, and checks the sandbox's final state against the state computed from the events.
"""

from __future__ import annotations

import asyncio
import json
import random

from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.sample_stream import Message, StreamSpec, generate
from tests.e2e.conftest import ScenarioFactory
from tests.fixtures.kafka import MakeTopic

STREAM = StreamSpec(customers=300, malformed=20, seed=11)


def the_stream(prefix: str) -> StreamSpec:
    return StreamSpec(**{**STREAM.__dict__, "prefix": prefix})


async def test_a_stream_reaches_the_exact_final_state_without_duplicates(
    scenario: ScenarioFactory,
) -> None:
    async with scenario() as s:
        expected = await s.publish(generate(the_stream("plain")))
        assert len(s.messages) >= 2000
        s.start_daemon()
        await s.wait_caught_up()
        assert s.problems(expected) == []
        stats = s.admin.stats()
        assert stats["duplicates"] == []
        async with await s.store() as store:
            summary = await store.summary()
            dead = await store.dead_letters(limit=1000)
        assert summary.dead_letters.get("invalid_json", 0) >= 1
        assert len(dead) == expected.invalid == 20
        assert all(row.dead_letter.reason and row.record.value is not None for row in dead)
        # Coalescing: far fewer requests than events.
        assert stats["requests_total"] < expected.valid * 0.8


async def test_three_sigkills_at_random_moments_lose_and_duplicate_nothing(
    scenario: ScenarioFactory,
) -> None:
    rng = random.Random(3)
    # A tighter limit keeps the daemon busy long enough to be killed mid-stream.
    async with scenario(limit=150, window=1) as s:
        expected = await s.publish(generate(the_stream("kill")))
        for _ in range(3):
            daemon = s.start_daemon()
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            daemon.kill()
        s.start_daemon()
        await s.wait_caught_up()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []


async def test_two_daemons_in_one_group_one_stopped_halfway_finish_the_stream(
    scenario: ScenarioFactory,
) -> None:
    async with scenario(limit=150, window=1) as s:
        expected = await s.publish(generate(the_stream("pair")))
        first, second = s.start_daemon(), s.start_daemon()
        await asyncio.sleep(6.0)
        assert first.stop() == 0
        await s.wait_caught_up()
        assert second.alive()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []


async def test_a_new_group_rereads_a_finished_stream_sending_only_what_is_new(
    scenario: ScenarioFactory,
) -> None:
    """A group reset re-reads every record: the finished ones cost no request (and no line of
    their own in the log), copies of them at new offsets are duplicates, a new event is sent."""
    async with scenario() as s:
        messages = generate(StreamSpec(customers=40, malformed=6, prefix="reread"))
        expected = await s.publish(messages)
        first = s.start_daemon()
        await s.wait_caught_up()
        assert first.stop() == 0
        before = s.admin.stats()["requests_total"]
        live = sorted(expected.customers)[0]
        news = {
            "specversion": "1.0",
            "id": "reread_news_1",
            "source": "crm/test",
            "type": "customer.updated",
            "subject": live,
            "sequence": "1000",
            "data": {"mrr": 4242},
        }
        copies = messages[:60]  # a producer retry: the same events again, at new offsets
        expected = await s.publish([*copies, Message(live.encode(), json.dumps(news).encode())])
        s.group = f"{s.group}_reset"
        daemon = s.start_daemon()
        await s.wait_caught_up()
        duplicates = daemon.total("pivotal_sync_events_finished_total", outcome="duplicate")
        assert daemon.stop() == 0
        assert s.admin.stats()["requests_total"] - before == 1
        assert s.problems(expected) == []
        assert expected.customers[live]["mrr"] == 4242
    assert duplicates == len(messages) + len(copies)
    lines = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]
    finished = [line for line in lines if line["event"] == "event_finished"]
    assert [(line["event_id"], line["outcome"]) for line in finished] == [("reread_news_1", "sent")]
    summaries = [line for line in lines if line["event"] == "events_finished_summary"]
    assert sum(line["outcomes"].get("duplicate", 0) for line in summaries) == duplicates


async def test_a_flaky_slow_api_still_gets_the_exact_state(scenario: ScenarioFactory) -> None:
    async with scenario("--error-rate", "0.1", "--error-status", "503", "--latency-ms", "200") as s:
        expected = await s.publish(generate(the_stream("flaky")))
        s.start_daemon(MAX_IN_FLIGHT="64")
        await s.wait_caught_up()
        assert s.problems(expected) == []
        stats = s.admin.stats()
        assert stats["duplicates"] == []
        assert stats["by_status"].get("503", 0) > 0


async def test_dead_letters_are_copied_to_the_dead_letter_topic_when_one_is_set(
    scenario: ScenarioFactory, make_topic: MakeTopic
) -> None:
    dlq = await make_topic(1)
    async with scenario() as s:
        expected = await s.publish(generate(StreamSpec(customers=20, malformed=6, prefix="dlq")))
        s.start_daemon(KAFKA_DEAD_LETTER_TOPIC=dlq)
        await s.wait_caught_up()
        copies = await read_topic(s.broker.bootstrap_servers, dlq, expected.invalid)
    assert len(copies) == expected.invalid == 6
    for headers in copies:
        assert headers["pivotal-sync-reason"]
        assert headers["pivotal-sync-event-id"].startswith(b"record:")


async def read_topic(bootstrap: str, topic: str, wanted: int) -> list[dict[str, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        found: list[dict[str, bytes]] = []
        for _ in range(40):
            batches = await consumer.getmany(timeout_ms=250)
            found += [dict(r.headers) for batch in batches.values() for r in batch]
            if len(found) >= wanted:
                break
        return found
    finally:
        await consumer.stop()


def crm_event(event_id: str, type_: str, subject: str, sequence: int, **data: object) -> Message:
    body: dict[str, object] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "crm/test",
        "type": type_,
        "subject": subject,
        "sequence": str(sequence),
    }
    if data:
        body["data"] = data
    return Message(subject.encode(), json.dumps(body).encode())


async def test_a_late_older_update_and_a_re_create_after_a_delete_keep_the_newest_state(
    scenario: ScenarioFactory,
) -> None:
    """Each step is published once the previous one is finished, so the customer's lane is
    idle in between: what decides is the entity map the daemon keeps, not the lane. A late
    update older than one applied is stale (no request); a create after a delete makes a new
    customer (not a PATCH of the deleted one)."""
    async with scenario() as s:
        customer = "late_00001"
        steps = [
            [crm_event("late_1", "customer.created", customer, 1, name="Late", status="active")],
            [crm_event("late_2", "customer.updated", customer, 9, status="at_risk", mrr=900)],
            [crm_event("late_3", "customer.updated", customer, 5, status="churned", mrr=500)],
            [crm_event("late_4", "customer.deleted", customer, 10)],
            [crm_event("late_5", "customer.created", customer, 11, name="Late again")],
        ]
        daemon = s.start_daemon()
        for step in steps:
            await s.publish(step)
            await s.wait_caught_up()
        assert daemon.total("pivotal_sync_events_finished_total", outcome="stale") == 1
        assert daemon.stop() == 0
        records = s.admin.records("customer")["customers"]
        live = [r for r in records if r["deleted_at"] is None]
        gone = [r for r in records if r["deleted_at"] is not None]
        assert [(r["name"], r["metadata"]["external_id"]) for r in live] == [
            ("Late again", customer)
        ]
        assert [(r["name"], r["status"], r["mrr"]) for r in gone] == [("Late", "at_risk", 900)]
        stats = s.admin.stats()
        assert stats["duplicates"] == []
        assert stats["requests_total"] == 4  # POST, PATCH, DELETE, POST
