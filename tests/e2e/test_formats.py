"""Input formats end to end: the real daemon on the real broker reads CloudEvents in binary
mode, and a Debezium stream of three tables on three topics through a mapping file; each ends
in exactly the expected Pivotal state, with no duplicate and no request for a record that is
invalid, unchanged, filtered, a tombstone, a duplicate or an out-of-order replay."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from devtools.local_stack import committed_offsets
from devtools.sample_stream import ExpectedState, StreamSpec, expected_state, generate
from tests.e2e.conftest import PARTITIONS, Scenario, ScenarioFactory
from tests.fixtures.kafka import MakeTopic

CATCH_UP_TIMEOUT_SECONDS = 180.0

Record = tuple[
    str, bytes | None, bytes | None, list[tuple[str, bytes]]
]  # topic, key, value, headers


async def produce(bootstrap: str, records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """Publish in order; the end offset of every (topic, partition) written."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=value, headers=headers)
            for topic, key, value, headers in records
        ]
        ends: dict[tuple[str, int], int] = {}
        for future in futures:
            meta = await future
            where = (meta.topic, meta.partition)
            ends[where] = max(ends.get(where, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


async def wait_committed(s: Scenario, ends: dict[tuple[str, int], int]) -> None:
    """Until the group has committed past every record published (on every topic)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
    topics = {topic for topic, _ in ends}
    while True:
        committed = {
            (topic, p): offset
            for topic in topics
            for p, offset in (
                await committed_offsets(s.broker.bootstrap_servers, s.group, topic, PARTITIONS)
            ).items()
        }
        if all(committed.get(where, -1) >= end for where, end in ends.items()):
            return
        alive = [d for d in s.daemons if d.alive()]
        assert alive, "the daemon exited: " + "\n".join(d.tail() for d in s.daemons)
        assert time.monotonic() < deadline, f"not caught up: {committed} vs {ends}"
        await asyncio.sleep(0.5)


# -- CloudEvents, binary mode ---------------------------------------------------------------


def binary_mode(value: bytes | None) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The same event in binary content mode: attributes as ce_ headers, data as the value."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        return value, []  # the generator's malformed records stay as they are
    if not isinstance(event, dict) or "specversion" not in event:
        return value, []
    headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data"]
    headers.append(("content-type", b"application/json"))
    data = event.get("data")
    return (json.dumps(data).encode() if data is not None else b""), headers


async def test_a_binary_mode_cloudevents_stream_reaches_the_exact_state(
    scenario: ScenarioFactory,
) -> None:
    """Binary-mode events give the state their structured twins give; a batch and a binary
    event without ce_id are dead letters that cost no request."""
    messages = generate(StreamSpec(customers=60, malformed=4, seed=5, prefix="bin"))
    expected = expected_state(messages)
    async with scenario() as s:
        records: list[Record] = []
        for message in messages:
            value, headers = binary_mode(message.value)
            records.append((s.topic, message.key, value, headers))
        batch = [("content-type", b"application/cloudevents-batch+json")]
        no_id = [("ce_specversion", b"1.0"), ("ce_type", b"customer.updated"), ("ce_source", b"x")]
        records += [(s.topic, b"bin_x", b"[]", batch), (s.topic, b"bin_y", b"{}", no_id)]
        ends = await produce(s.broker.bootstrap_servers, records)
        s.start_daemon()
        await wait_committed(s, ends)
        assert s.problems(expected) == []
        stats = s.admin.stats()
        assert stats["duplicates"] == []
        assert not [status for status in stats["by_status"] if status.startswith("4")]
        async with await s.store() as store:
            summary = await store.summary()
        assert summary.dead_letters.get("cloudevents_batch") == 1
        assert summary.dead_letters.get("not_cloudevent", 0) >= 1
        assert sum(summary.dead_letters.values()) == expected.invalid + 2


# -- Debezium, three tables on three topics ------------------------------------------------

MAPPING = """
topics:
  {accounts}:
    format: debezium
    kind: customer
    id: account_id
    skip_when: ["is_test"]
    fields:
      name: {{from: company_name, transform: [trim]}}
      slug: account_slug
      domain: {{from: website, transform: [trim, lowercase]}}
      status: {{from: stage, default: onboarding}}
  {people}:
    format: debezium
    kind: contact
    id: person_id
    customer: account_id
    fields:
      name: full_name
      email: {{from: email_address, transform: [trim, lowercase]}}
      title: job_title
  {projects}:
    format: debezium
    kind: onboarding
    id: project_id
    customer: account_id
    fields:
      name: project_name
      phase: milestone
      state: {{from: health, default: active}}
"""

PK = {"accounts": "account_id", "people": "person_id", "projects": "project_id"}


@dataclass
class Database:
    """A CRM database whose changes Debezium publishes: it writes the records and keeps the
    model of what Pivotal must hold."""

    topics: dict[str, str]
    rows: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in PK})
    lsn: int = 1000
    written: list[Record] = field(default_factory=list)

    def record(self, table: str, op: str, before: Any, after: Any, lsn: int) -> Record:
        payload = {
            "op": op,
            "before": before,
            "after": after,
            "source": {"connector": "postgresql", "db": "crm", "table": table, "lsn": lsn},
            "ts_ms": 1_764_000_000_000 + lsn,
        }
        # Accounts come with the schema envelope, the others without: both are read.
        document = (
            {"schema": {"type": "struct"}, "payload": payload} if table == "accounts" else payload
        )
        row = after or before
        key = json.dumps({PK[table]: row[PK[table]]}).encode()
        return (self.topics[table], key, json.dumps(document).encode(), [])

    def write(self, table: str, op: str, row_id: Any, **changes: Any) -> Record:
        self.lsn += 10
        before = self.rows[table].get(row_id)
        if op == "d":
            after = None
            del self.rows[table][row_id]
        else:
            after = {**(before or {}), PK[table]: row_id, **changes}
            self.rows[table][row_id] = after
        record = self.record(table, op, before, after, self.lsn)
        self.written.append(record)
        if op == "d":
            self.tombstone(table, row_id)
        return record

    def tombstone(self, table: str, row_id: Any) -> None:
        key = json.dumps({PK[table]: row_id}).encode()
        self.written.append((self.topics[table], key, None, []))

    def expected(self) -> ExpectedState:
        state = ExpectedState()
        for account in self.rows["accounts"].values():
            if account.get("is_test"):
                continue
            state.customers[str(account["account_id"])] = {
                "customer": str(account["account_id"]),
                "name": account["company_name"].strip(),
                "slug": account["account_slug"],
                "domain": account["website"].strip().lower(),
                "status": account.get("stage") or "onboarding",
            }
        for person in self.rows["people"].values():
            fields = {"name": person["full_name"], "email": person["email_address"].strip().lower()}
            if person.get("job_title") is not None:
                fields["title"] = person["job_title"]
            state.contacts[person["person_id"]] = {"customer": str(person["account_id"]), **fields}
        for project in self.rows["projects"].values():
            state.onboardings[project["project_id"]] = {
                "customer": str(project["account_id"]),
                "name": project["project_name"],
                "phase": project["milestone"],
                "state": project.get("health") or "active",
            }
        return state


def history(db: Database) -> None:
    """Inserts, updates, deletes with their tombstones, and a primary-key change."""
    for a in range(1, 9):
        db.write(
            "accounts",
            "c",
            a,
            company_name=f" Account {a} ",
            account_slug=f"acct-{a}",
            website=f"Acct{a}.Example",
            stage=None,
            notes="",
        )
        for suffix in ("a", "b"):
            db.write(
                "people",
                "c",
                f"p{a}{suffix}",
                account_id=a,
                full_name=f"Person {a}{suffix}",
                email_address=f" P{a}{suffix}@Acct{a}.example ",
                job_title=None,
            )
        if a % 2 == 0:
            db.write(
                "projects",
                "c",
                f"j{a}",
                account_id=a,
                project_name=f"Launch {a}",
                milestone="program_design",
            )
    db.write("accounts", "c", 99, company_name="Test", account_slug="t", website="t", is_test=True)
    db.write("accounts", "u", 1, website="acct1.io")
    db.write("accounts", "u", 2, stage="active")
    db.write("people", "u", "p1a", job_title="CTO")
    db.write("projects", "u", "j2", milestone="review", health="at_risk")
    db.write("people", "d", "p3b")
    db.write("projects", "d", "j4")
    # A primary-key change: Debezium emits a delete of the old key (with its tombstone) and a
    # create of the new one.
    moved = dict(db.rows["people"]["p5a"])
    db.write("people", "d", "p5a")
    moved.pop("person_id")
    db.write("people", "c", "p5z", **moved)


def cascade(db: Database) -> None:
    """A cascading delete in the CRM, later: the children first, then the account. (Published
    in the same batch as the creates, the account's delete could overtake its children's
    creates, which sit on other topics: Kafka orders only within a partition.)"""
    for child in ("p8a", "p8b"):
        db.write("people", "d", child)
    db.write("projects", "d", "j8")
    db.write("accounts", "d", 8)


def noise(db: Database, rng: random.Random) -> list[Record]:
    """Records that must cost no request: each is a duplicate, stale, unchanged, filtered, a
    tombstone or invalid (five, one of each reason)."""
    replays = rng.sample([r for r in db.written if r[2] is not None], 12)
    accounts, people = db.topics["accounts"], db.topics["people"]
    old_account_1 = {**db.rows["accounts"][1], "website": "stale.example"}
    stale = db.record("accounts", "u", db.rows["accounts"][1], old_account_1, lsn=1005)
    unchanged = [
        db.write("accounts", "u", 3, notes="renamed the notes column only"),
        # Only the case of the e-mail changed: the lowercase transform makes it the same.
        db.write("people", "u", "p2a", email_address=" P2A@ACCT2.EXAMPLE "),
        db.write("accounts", "u", 99, company_name="Still a test"),
    ]
    invalid: list[Record] = [
        (accounts, b"{}", b"not json", []),
        (accounts, b"{}", json.dumps({"op": "t", "before": None, "after": None}).encode(), []),
        (accounts, b"{}", json.dumps({"op": "c", "after": {"company_name": "no id"}}).encode(), []),
        (
            accounts,
            b"{}",
            json.dumps(
                {"op": "c", "after": {"account_id": 50, "company_name": "x", "stage": "bogus"}}
            ).encode(),
            [],
        ),
        (
            people,
            b"{}",
            json.dumps(
                {
                    "op": "c",
                    "after": {"person_id": "p0", "full_name": "x", "email_address": "x@y.z"},
                }
            ).encode(),
            [],
        ),
    ]
    tombstones: list[Record] = [(accounts, b'{"account_id": 8}', None, [])] * 2
    return [*replays, stale, *unchanged, *tombstones, *invalid]


async def test_a_debezium_stream_of_three_tables_reaches_the_exact_state(
    scenario: ScenarioFactory, make_topic: MakeTopic, tmp_path: Path
) -> None:
    """Three tables on three topics through a mapping that renames fields: creates, updates,
    deletes, tombstones and a primary-key change give exactly the CRM's rows in Pivotal; then
    replays, stale and unchanged updates, filtered rows, tombstones and invalid records cost
    not one request."""
    topics = {table: await make_topic(PARTITIONS) for table in PK}
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(**topics))
    db = Database(topics)
    history(db)
    async with scenario() as s:
        ends = await produce(s.broker.bootstrap_servers, db.written)
        s.start_daemon(KAFKA_TOPICS=",".join(topics.values()), MAPPING_FILE=str(mapping))
        await wait_committed(s, ends)
        assert s.problems(db.expected()) == []
        published = len(db.written)
        cascade(db)
        ends = await produce(s.broker.bootstrap_servers, db.written[published:])
        await wait_committed(s, ends)
        expected = db.expected()
        assert s.problems(expected) == []
        assert "p5a" not in expected.contacts
        assert "p5z" in expected.contacts
        before = s.admin.stats()
        assert before["duplicates"] == []

        extra = noise(db, random.Random(4))
        ends = await produce(s.broker.bootstrap_servers, extra)
        await wait_committed(s, ends)
        after = s.admin.stats()
        assert after["requests_total"] == before["requests_total"]
        assert s.problems(db.expected()) == []
        async with await s.store() as store:
            summary = await store.summary()
        assert summary.dead_letters == {
            "invalid_json": 1,
            "not_debezium": 1,
            "missing_key": 1,
            "invalid_field": 1,
            "missing_customer": 1,
        }
