"""The checkpoint store against a real Postgres.

`database_url` (tests/fixtures/postgres.py) is one fresh database per module; each test that
needs a clean slate gets its own schema in it, selected through `search_path` in the DSN.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from daemon.checkpoints import MAX_REDRIVES, CheckpointStore, DeadLetterRow, load_migrations
from daemon.entities import Intent
from daemon.events import EntityKey, EntityKind, RecordRef
from daemon.metrics import Metrics
from daemon.outcomes import DeadLetter, EntityState, Finished, Outcome
from daemon.rereads import Checkpointed

pytestmark = pytest.mark.postgres

CUSTOMER = EntityKind.CUSTOMER
CONTACT = EntityKind.CONTACT


def with_search_path(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
async def schema_dsn(database_url: str) -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield with_search_path(database_url, schema)
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def store(schema_dsn: str) -> AsyncIterator[CheckpointStore]:
    async with await CheckpointStore.connect(schema_dsn) as store:
        await store.migrate()
        yield store


def ref(offset: int, *, partition: int = 0, value: bytes | None = b"{}") -> RecordRef:
    return RecordRef(
        topic="crm.customers", partition=partition, offset=offset, key=b"cus_1", value=value
    )


def customer(external_id: str) -> EntityKey:
    return EntityKey(kind=CUSTOMER, external_id=external_id)


def contact(external_id: str) -> EntityKey:
    return EntityKey(kind=CONTACT, external_id=external_id)


def done(
    event_id: str,
    offset: int = 0,
    *,
    outcome: Outcome = Outcome.SENT,
    entity: EntityKey | None = None,
    pivotal_id: str | None = None,
    record: RecordRef | None = None,
) -> Finished:
    return Finished(
        event_id=event_id,
        record=record or ref(offset),
        outcome=outcome,
        entity=entity,
        pivotal_id=pivotal_id,
    )


def parked(
    event_id: str,
    offset: int = 0,
    *,
    reason: str = "http_400",
    status: int | None = 400,
    attempts: int = 1,
    entity: EntityKey | None = None,
    record: RecordRef | None = None,
) -> Finished:
    return Finished(
        event_id=event_id,
        record=record or ref(offset),
        outcome=Outcome.DEAD_LETTERED,
        entity=entity,
        dead_letter=DeadLetter(
            reason=reason,
            detail=f"{reason} detail",
            status=status,
            response_body='{"error": "invalid"}' if status else None,
            attempts=attempts,
        ),
    )


def state(
    key: EntityKey,
    pivotal_id: str | None,
    *,
    sequence: int | None = None,
    deleted: bool = False,
    customer_external_id: str = "cus_1",
) -> EntityState:
    return EntityState(
        key=key,
        pivotal_id=pivotal_id,
        customer_external_id=customer_external_id,
        last_sequence=sequence,
        deleted=deleted,
    )


# -- migrations --------------------------------------------------------------------------------


async def test_migrate_applies_every_migration_once_then_nothing(database_url: str) -> None:
    async with await CheckpointStore.connect(database_url) as store:
        assert await store.migrate() == [m.name for m in load_migrations()]
        assert await store.migrate() == []
        assert (await store.summary()).migrations_pending == ()


async def test_two_replicas_migrating_at_once_apply_each_migration_exactly_once(
    schema_dsn: str,
) -> None:
    async with (
        await CheckpointStore.connect(schema_dsn) as one,
        await CheckpointStore.connect(schema_dsn) as two,
    ):
        first, second = await asyncio.gather(one.migrate(), two.migrate())
        assert sorted([first, second]) == [[], [m.name for m in load_migrations()]]
        assert (await one.summary()).migrations_applied == tuple(m.name for m in load_migrations())


def test_migrations_ship_in_the_package_in_number_order() -> None:
    names = [m.name for m in load_migrations()]
    assert names[0] == "0001_initial"
    assert names == sorted(names)


async def test_every_table_and_column_is_commented(store: CheckpointStore, schema_dsn: str) -> None:
    conn = await asyncpg.connect(schema_dsn)
    try:
        missing = await conn.fetch(
            """
            SELECT c.relname, a.attname
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE c.relkind = 'r' AND col_description(c.oid, a.attnum) IS NULL
            """
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in missing] == []


async def test_ping_answers_while_connected_and_raises_once_closed(schema_dsn: str) -> None:
    store = await CheckpointStore.connect(schema_dsn)
    await store.ping()
    await store.close()
    with pytest.raises(asyncpg.InterfaceError):
        await store.ping()


# -- record and the daemon's reads -------------------------------------------------------------


async def test_record_writes_checkpoints_entities_and_dead_letters(store: CheckpointStore) -> None:
    await store.record(
        [done("e1", 1, entity=customer("cus_1"), pivotal_id="p1"), parked("e2", 2)],
        [state(customer("cus_1"), "p1", sequence=3)],
    )
    assert await store.finished_ids(["e1", "e2"]) == {"e1", "e2"}
    assert await store.load_entities([customer("cus_1")]) == {
        customer("cus_1"): state(customer("cus_1"), "p1", sequence=3)
    }
    [letter] = await store.dead_letters()
    assert (letter.event_id, letter.dead_letter.reason, letter.dead_letter.status) == (
        "e2",
        "http_400",
        400,
    )


async def test_a_batch_that_fails_part_way_writes_nothing(store: CheckpointStore) -> None:
    # The dead letters are written last; a negative attempt count violates their CHECK.
    with pytest.raises(asyncpg.CheckViolationError):
        await store.record(
            [done("e1", 1), parked("e2", 2, attempts=-1)], [state(customer("cus_1"), "p1")]
        )
    assert await store.finished_ids(["e1", "e2"]) == set()
    assert await store.load_entities([customer("cus_1")]) == {}
    assert await store.dead_letters() == []


async def test_finished_ids_returns_only_the_ids_that_have_a_checkpoint(
    store: CheckpointStore,
) -> None:
    await store.record([done("e1", 1), done("e3", 3)], [])
    assert await store.finished_ids(["e1", "e2", "e3", "e4"]) == {"e1", "e3"}
    assert await store.finished_ids([]) == set()


async def test_retention_deletes_only_checkpoints_older_than_the_cutoff_and_keeps_the_map(
    store: CheckpointStore, schema_dsn: str
) -> None:
    await store.record(
        [done(f"e{i}", i, entity=customer(f"cus_{i}"), pivotal_id=f"p{i}") for i in range(5)],
        [state(customer(f"cus_{i}"), f"p{i}") for i in range(5)],
    )
    conn = await asyncpg.connect(schema_dsn)
    try:
        await conn.execute(
            "UPDATE checkpoints SET finished_at = now() - interval '40 days' "
            "WHERE event_id IN ('e0', 'e1', 'e2')"
        )
        cutoff = await conn.fetchval("SELECT now() - interval '30 days'")
    finally:
        await conn.close()
    # Batches of 2: the three old rows take two rounds, and the count adds up.
    assert await store.prune_checkpoints(cutoff, batch_size=2) == 3
    assert await store.finished_ids([f"e{i}" for i in range(5)]) == {"e3", "e4"}
    assert len(await store.load_entities([customer(f"cus_{i}") for i in range(5)])) == 5
    assert await store.prune_checkpoints(cutoff) == 0


async def test_recording_the_same_events_again_is_harmless_and_keeps_the_first_outcome(
    store: CheckpointStore,
) -> None:
    await store.record([done("e1", 1, pivotal_id="p1")], [])
    await store.record([done("e1", 1, outcome=Outcome.DUPLICATE), done("e1", 1)], [])
    summary = await store.summary()
    assert summary.outcomes[Outcome.SENT] == 1
    assert summary.finished_total == 1


async def test_the_entity_map_keeps_the_latest_state_written(store: CheckpointStore) -> None:
    await store.record([], [state(customer("cus_1"), None)])
    await store.record([], [state(customer("cus_1"), "p1", sequence=1)])
    await store.record([], [state(customer("cus_1"), "p1", sequence=2, deleted=True)])
    loaded = await store.load_entities([customer("cus_1")])
    assert loaded[customer("cus_1")] == state(customer("cus_1"), "p1", sequence=2, deleted=True)


async def test_the_last_state_of_a_key_wins_within_one_batch(store: CheckpointStore) -> None:
    await store.record([], [state(contact("c1"), "p1"), state(contact("c1"), "p2")])
    assert (await store.load_entities([contact("c1")]))[contact("c1")].pivotal_id == "p2"


async def test_an_entity_never_goes_back_to_an_older_sequence(store: CheckpointStore) -> None:
    await store.record([], [state(customer("cus_1"), "p1", sequence=5)])
    await store.record([], [state(customer("cus_1"), "old", sequence=4)])
    await store.record([], [state(customer("cus_1"), "p1", sequence=None, deleted=True)])
    loaded = (await store.load_entities([customer("cus_1")]))[customer("cus_1")]
    assert (loaded.pivotal_id, loaded.last_sequence, loaded.deleted) == ("p1", 5, True)


async def test_load_entities_returns_only_known_keys_of_the_right_kind(
    store: CheckpointStore,
) -> None:
    await store.record([], [state(customer("x"), "p1"), state(contact("y"), "p2")])
    loaded = await store.load_entities([customer("x"), contact("x"), customer("z")])
    assert list(loaded) == [customer("x")]
    assert await store.load_entities([]) == {}


async def test_overlapping_batches_in_opposite_orders_do_not_deadlock(
    store: CheckpointStore,
) -> None:
    keys = [customer(f"cus_{i}") for i in range(50)]
    forward = [state(k, "p") for k in keys]
    events = [done(f"e{i}", i) for i in range(50)]
    for _ in range(5):
        await asyncio.gather(
            store.record(events, forward), store.record(events[::-1], forward[::-1])
        )
    assert len(await store.load_entities(keys)) == 50


async def test_a_nul_character_from_outside_cannot_poison_a_batch(store: CheckpointStore) -> None:
    record = RecordRef(
        topic="t", partition=0, offset=1, key=None, value=b"\x00", headers=(("h\x00", b"\x00"),)
    )
    bad = Finished(
        event_id="evt\x00",
        record=record,
        outcome=Outcome.DEAD_LETTERED,
        dead_letter=DeadLetter(reason="invalid_json", detail="byte \x00", response_body="\x00"),
    )
    await store.record([bad], [])
    assert await store.finished_ids(["evt\x00"]) == {"evt\x00"}
    [letter] = await store.dead_letters()
    assert letter.record.value == b"\x00"
    assert letter.record.headers == (("h\ufffd", b"\x00"),)


async def test_record_reports_duration_success_time_and_failures_to_metrics(
    schema_dsn: str,
) -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    async with await CheckpointStore.connect(schema_dsn, metrics=metrics) as store:
        await store.migrate()
        await store.record([done("e1", 1)], [])
        assert sample("pivotal_sync_checkpoint_write_duration_seconds_count") == 1
        assert (sample("pivotal_sync_checkpoint_last_success_timestamp_seconds") or 0) > 0
        with pytest.raises(asyncpg.CheckViolationError):
            await store.record([parked("e2", 2, attempts=-1)], [])
        assert sample("pivotal_sync_checkpoint_write_failures_total") == 1
        assert sample("pivotal_sync_checkpoint_write_duration_seconds_count") == 2


# -- create intents ----------------------------------------------------------------------------


async def test_a_saved_intent_comes_back_with_its_body_byte_for_byte(
    store: CheckpointStore,
) -> None:
    body = {"name": "Aurora", "slug": "aurora", "mrr": 12.5, "metadata": {"z": 1, "a": None}}
    intent = Intent(key=contact("c1"), idempotency_key="k1", parent_id="p_cus", body=body)
    await store.save_intents([intent])
    loaded = await store.load_intents([contact("c1"), customer("c1")])
    assert loaded == {contact("c1"): intent}
    assert json.dumps(loaded[contact("c1")].body) == json.dumps(body)
    assert await store.load_intents([]) == {}


async def test_a_newer_intent_for_the_same_entity_replaces_the_older(
    store: CheckpointStore,
) -> None:
    await store.save_intents([Intent(key=customer("a"), idempotency_key="k1", parent_id=None)])
    await store.save_intents([Intent(key=customer("a"), idempotency_key="k2", parent_id=None)])
    assert (await store.load_intents([customer("a")]))[customer("a")].idempotency_key == "k2"


async def test_an_intent_settles_with_a_durable_id_or_a_dead_letter_but_not_a_delete(
    store: CheckpointStore,
) -> None:
    await store.save_intents(
        [
            Intent(key=customer(name), idempotency_key=name, parent_id=None)
            for name in ("created", "parked", "deleted")
        ]
    )
    await store.record(
        [parked("e1", 1, entity=customer("parked"))],
        [state(customer("created"), "p1"), state(customer("deleted"), "p2", deleted=True)],
    )
    keys = [customer("created"), customer("parked"), customer("deleted")]
    assert list(await store.load_intents(keys)) == [customer("deleted")]


# -- dead letters ------------------------------------------------------------------------------


async def test_a_dead_letter_seen_again_updates_its_row_instead_of_adding_one(
    store: CheckpointStore,
) -> None:
    await store.record([parked("e1", 1, reason="http_400", attempts=2)], [])
    [first] = await store.dead_letters()
    await store.forget_events(["e1"])
    await store.record([parked("e1", 7, reason="http_404", status=404, attempts=1)], [])
    [again] = await store.dead_letters()
    assert again.id == first.id
    assert (again.dead_letter.reason, again.dead_letter.status) == ("http_404", 404)
    assert (again.dead_letter.attempts, again.times_seen, again.record.offset) == (3, 2, 7)
    assert again.first_seen == first.first_seen
    assert again.last_seen > first.last_seen


async def test_a_dead_letter_keeps_the_record_exactly_as_it_arrived(
    store: CheckpointStore,
) -> None:
    record = RecordRef(
        topic="crm.customers",
        partition=2,
        offset=41,
        key=b"cus_\xff",
        value=None,
        headers=(("trace", b"abc"), ("raw", b"\xff\xfe"), ("trace", b"def")),
        timestamp_ms=1_767_225_600_000,
    )
    finished = Finished(
        event_id=Finished.record_id(record),
        record=record,
        outcome=Outcome.DEAD_LETTERED,
        entity=customer("cus_1"),
        dead_letter=DeadLetter(reason="invalid_json", detail="not JSON"),
    )
    await store.record([finished], [])
    [row] = await store.dead_letters()
    assert await store.dead_letter(row.id) == row
    assert (row.event_id, row.record, row.entity) == (
        "record:crm.customers:2:41",
        record,
        customer("cus_1"),
    )
    assert await store.dead_letter(row.id + 1000) is None


async def test_dead_letters_filter_by_reason_status_entity_and_time_newest_first(
    store: CheckpointStore,
) -> None:
    await store.record([parked("a", 1, reason="http_400", entity=customer("cus_1"))], [])
    await store.record([parked("b", 2, reason="http_404", status=404, entity=contact("cus_1"))], [])
    await store.record([parked("c", 3, reason="invalid_json", status=None)], [])
    everything = await store.dead_letters()
    assert [d.event_id for d in everything] == ["c", "b", "a"]

    def ids(rows: list[DeadLetterRow]) -> list[str]:
        return [r.event_id for r in rows]

    assert ids(await store.dead_letters(reason="http_404")) == ["b"]
    assert ids(await store.dead_letters(status=400)) == ["a"]
    assert ids(await store.dead_letters(entity="cus_1")) == ["b", "a"]
    assert ids(await store.dead_letters(entity=contact("cus_1"))) == ["b"]
    assert ids(await store.dead_letters(since=everything[1].last_seen)) == ["c", "b"]
    assert ids(await store.dead_letters(limit=1)) == ["c"]
    assert ids(await store.dead_letters(reason="http_404", status=400)) == []


async def test_a_dead_letter_is_redriven_at_most_the_redrive_limit(
    store: CheckpointStore,
) -> None:
    await store.record([parked("a", 1), parked("b", 2)], [])
    a, b = sorted(await store.dead_letters(), key=lambda d: d.event_id)
    for _ in range(MAX_REDRIVES):
        assert await store.mark_dead_letters_retried([a.id]) == [a.id]
    assert await store.mark_dead_letters_retried([a.id, b.id]) == [b.id]
    marked = await store.dead_letter(a.id)
    assert marked is not None
    assert marked.retry_count == MAX_REDRIVES
    assert marked.retried_at is not None


async def test_delete_dead_letters_by_ids_or_filter_and_never_all_by_accident(
    store: CheckpointStore,
) -> None:
    await store.record([parked("a", 1), parked("b", 2), parked("c", 3, reason="x")], [])
    rows = {d.event_id: d.id for d in await store.dead_letters()}
    assert await store.delete_dead_letters([rows["a"]]) == 1
    assert await store.delete_dead_letters([rows["b"]], reason="x") == 0
    assert await store.delete_dead_letters(reason="x") == 1
    with pytest.raises(ValueError, match="filter"):
        await store.delete_dead_letters()
    assert [d.event_id for d in await store.dead_letters()] == ["b"]


# -- replay and status -------------------------------------------------------------------------


async def test_forgotten_events_are_no_longer_finished(store: CheckpointStore) -> None:
    await store.record([done("e1", 1), done("e2", 2)], [])
    assert await store.forget_events(["e1", "e9"]) == 1
    assert await store.finished_ids(["e1", "e2"]) == {"e2"}
    await store.record([done("e1", 1, outcome=Outcome.NOOP)], [])
    assert (await store.summary()).outcomes[Outcome.NOOP] == 1


async def test_summary_counts_outcomes_dead_letters_entities_and_last_checkpoint(
    store: CheckpointStore,
) -> None:
    empty = await store.summary()
    assert (empty.finished_total, empty.last_checkpoint) == (0, None)
    await store.record(
        [
            done("e1", 1),
            done("e2", 2, outcome=Outcome.COALESCED),
            done("e3", 3),
            parked("e4", 4, reason="http_400"),
            parked("e5", 5, reason="parent_missing", status=None),
            parked("e6", 6, reason="parent_missing", status=None),
        ],
        [
            state(customer("a"), "p1"),
            state(customer("b"), "p2", deleted=True),
            state(contact("c"), "p3"),
        ],
    )
    summary = await store.summary()
    assert summary.outcomes == {
        "sent": 2,
        "coalesced": 1,
        "superseded": 0,
        "duplicate": 0,
        "stale": 0,
        "noop": 0,
        "dead_lettered": 3,
    }
    assert summary.dead_letters == {"http_400": 1, "parent_missing": 2}
    assert summary.dead_letters_total == 3
    assert summary.entities == {"customer": 1, "contact": 1, "onboarding": 0}
    assert summary.deleted_entities == 1
    assert summary.last_checkpoint is not None
    [newest, *_] = await store.dead_letters()
    assert abs(summary.last_checkpoint - newest.last_seen) < timedelta(seconds=1)


async def test_checkpoints_of_tells_whether_the_row_was_written_for_that_very_record(
    store: CheckpointStore,
) -> None:
    """A re-read record matches its own row; its id at another offset or topic only exists."""
    entity = EntityKey(kind=CUSTOMER, external_id="c1")
    await store.record([done("e1", 5, entity=entity), done("e2", 6)], [])
    elsewhere = RecordRef(topic="other", partition=0, offset=5, key=None, value=b"{}")
    found = await store.checkpoints_of(
        [
            ("e1", ref(5)),
            ("e1", ref(7)),
            ("e3", ref(5)),
            ("e1", elsewhere),
            ("e2", ref(6, partition=1)),
            ("e2", ref(6)),
        ]
    )
    assert found == [
        Checkpointed(same_record=True, entity=entity),
        Checkpointed(same_record=False, entity=entity),
        None,
        Checkpointed(same_record=False, entity=entity),
        Checkpointed(same_record=False, entity=None),
        Checkpointed(same_record=True, entity=None),
    ]
    assert await store.checkpoints_of([]) == []
