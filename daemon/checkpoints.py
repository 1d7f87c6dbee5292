"""The checkpoint store: what is durably finished, in Postgres (asyncpg).

Owns these tables (see `migrations/`, every column commented there):

- `checkpoints`     one row per finished event id: the completed ids a replay skips;
- `entities`        the entity map, (kind, external id) → Pivotal id, last sequence, deleted;
- `dead_letters`    parked events with exactly what arrived and what came back;
- `create_intents`  POSTs that may have been sent, replayed verbatim (see `entities.py`);

plus `schema_migrations`, the ledger of the numbered SQL files in `migrations/`. The queries
live in `queries.sql`, one named block each.

`record()` writes a batch of finished events in ONE transaction: only once it returns may the
Kafka offsets below them be committed (README.md, "Guarantees"). Everything it writes is
idempotent, so writing a batch again after a crash or a replay is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from types import TracebackType
from typing import Any, Self

import asyncpg

from daemon.entities import Intent
from daemon.events import EntityKey, EntityKind, RecordRef
from daemon.metrics import Metrics
from daemon.outcomes import DeadLetter, EntityState, Finished, Outcome
from daemon.redaction import redact, redact_optional
from daemon.rereads import Checkpointed

# Key of the session advisory lock that serialises migrate() across replicas: "pivotal" in
# ASCII, so it is recognisable in pg_locks and unlikely to collide with another application.
MIGRATION_LOCK_KEY = 0x7069766F74616C
# Ordinary statements: a hung server must surface as an error, not as a silent stall.
COMMAND_TIMEOUT_SECONDS = 30.0
# A health ping that takes longer means "unreachable" to /readyz.
PING_TIMEOUT_SECONDS = 2.0
# Migrations may build indexes on big tables, and waiting replicas wait for them.
MIGRATION_TIMEOUT_SECONDS = 600.0
# How long close() lets borrowed connections come back before terminating the pool.
CLOSE_TIMEOUT_SECONDS = 3.0
# A dead letter redriven this many times is not redriven again (a poison event cannot loop).
MAX_REDRIVES = 3

_KINDS = {kind.value: kind for kind in EntityKind}
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+$")
_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file of `daemon/migrations/`."""

    name: str  # file name without ".sql", e.g. "0001_initial"; the schema_migrations key
    sql: str


def load_migrations() -> tuple[Migration, ...]:
    """The shipped migrations, in name (= number) order."""
    found: list[Migration] = []
    for entry in (resources.files("daemon") / "migrations").iterdir():
        name, dot, suffix = entry.name.rpartition(".")
        if dot and suffix == "sql":
            if not _MIGRATION_NAME.match(name):
                raise ValueError(f"migration {entry.name!r} is not named NNNN_snake_case.sql")
            found.append(Migration(name=name, sql=entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"two migrations share a number: {[m.name for m in found]}")
    return tuple(found)


def load_queries() -> dict[str, str]:
    """The named blocks of `queries.sql`: `-- name --`, a comment line, the SQL."""
    text = (resources.files("daemon") / "queries.sql").read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)[1:]  # [name, body, name, body, ...]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


QUERIES = load_queries()
# Postgres is asked about this many ids at a time (one array parameter per query).
LOOKUP_CHUNK = 5000


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetterRow:
    """One row of `dead_letters`, for the operator tools."""

    id: int
    event_id: str
    # The latest failure; `attempts` is summed over every time the event was dead-lettered.
    dead_letter: DeadLetter
    # Exactly what arrived (the latest time), enough to produce it again.
    record: RecordRef
    entity: EntityKey | None
    times_seen: int
    first_seen: datetime
    last_seen: datetime
    retried_at: datetime | None
    retry_count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class EventOutcome:
    """What the daemon's tables say about one event id (the import and redrive reports)."""

    outcome: str
    kind: str | None
    reason: str | None = None
    attempts: int = 0  # requests Pivotal answered for a dead-lettered event


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreSummary:
    """Counts for `pivotal-sync status` and the demo."""

    # Checkpoint rows by outcome; every Outcome is present, zero included.
    outcomes: Mapping[str, int]
    last_checkpoint: datetime | None
    # Dead letters by reason.
    dead_letters: Mapping[str, int]
    # Live (not deleted) entity map rows by kind; every EntityKind is present.
    entities: Mapping[str, int]
    deleted_entities: int
    migrations_applied: tuple[str, ...]
    migrations_pending: tuple[str, ...]

    @property
    def finished_total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def dead_letters_total(self) -> int:
        return sum(self.dead_letters.values())


class CheckpointStore:
    """The daemon's Postgres state behind an asyncpg pool. Use `connect()`, then `async with`."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], metrics: Metrics | None = None) -> None:
        self._pool = pool
        self._metrics = metrics
        self._abandoned: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 4, metrics: Metrics | None = None
    ) -> CheckpointStore:
        # Any libpq URL, including the Unix-socket form postgresql://user@/db?host=/dir.
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, command_timeout=COMMAND_TIMEOUT_SECONDS
        )
        return cls(pool, metrics)

    def terminate(self) -> None:
        """Close every connection now, queries in flight included (they fail)."""
        self._pool.terminate()

    async def close(self) -> None:
        # A graceful close waits for every connection to be released; one stuck in a silent
        # server never is, so after the time-out every socket is closed without a goodbye.
        closing = asyncio.create_task(self._pool.close())
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_SECONDS)
        if not done:
            self._pool.terminate()
            await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_SECONDS)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the pending migrations in order; return their names. Safe from many replicas."""
        applied: list[str] = []
        async with self._pool.acquire() as conn:
            # A session lock, not a transaction one: each migration commits on its own, and a
            # replica that waited then finds them recorded and applies nothing.
            await conn.execute(
                QUERIES["lock_migrations"], MIGRATION_LOCK_KEY, timeout=MIGRATION_TIMEOUT_SECONDS
            )
            try:
                await conn.execute(QUERIES["create_schema_migrations"])
                done = {r["name"] for r in await conn.fetch(QUERIES["applied_migrations"])}
                for migration in load_migrations():
                    if migration.name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT_SECONDS)
                        await conn.execute(QUERIES["insert_migration"], migration.name)
                    applied.append(migration.name)
            finally:
                # On a dead connection the server has already dropped the lock.
                if not conn.is_closed():
                    await conn.execute(QUERIES["unlock_migrations"], MIGRATION_LOCK_KEY)
        return applied

    async def ping(self, timeout_seconds: float = PING_TIMEOUT_SECONDS) -> None:
        """Raise unless the server answers within `timeout_seconds`, whatever it does.

        Not `wait_for`: cancelling a query makes asyncpg send a cancel request and wait for it,
        and against a blackholed server that cancel waits in the same blackhole — the health
        check then answered "fine" for as long as the outage lasted. On time-out the ping's
        connection is terminated (its socket closed, nothing waited for) and the ping abandoned.
        """
        held: list[asyncpg.pool.PoolConnectionProxy[asyncpg.Record]] = []

        async def ask() -> None:
            async with self._pool.acquire() as conn:
                held.append(conn)
                await conn.fetchval(QUERIES["ping"])

        task = asyncio.create_task(ask(), name="postgres-ping")
        done, _ = await asyncio.wait({task}, timeout=timeout_seconds)
        if task in done:
            return task.result()
        for conn in held:
            conn.terminate()
        task.cancel()
        # Kept until it ends on its own, or the event loop would only hold a weak reference.
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        raise TimeoutError(f"Postgres did not answer a ping within {timeout_seconds:g} s")

    async def prune_checkpoints(self, finished_before: datetime, batch_size: int = 10_000) -> int:
        """Delete checkpoint rows finished before the cutoff, in batches (short transactions,
        no long lock on a big table); returns how many went."""
        total = 0
        while True:
            status = await self._pool.execute(
                QUERIES["prune_checkpoints"], finished_before, batch_size
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch_size:
                return total

    # -- the daemon's reads --------------------------------------------------------------------

    async def finished_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of these event ids that already have a checkpoint."""
        found: set[str] = set()
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            rows = await self._pool.fetch(QUERIES["finished_ids"], [_text(i) for i in chunk])
            # Map back through _text so an id that had to be cleaned is still recognised.
            known = {r["event_id"] for r in rows}
            found |= {i for i in chunk if _text(i) in known}
        return found

    async def checkpoints_of(
        self, candidates: Sequence[tuple[str, RecordRef]]
    ) -> list[Checkpointed | None]:
        """For each (event id, record): its id's checkpoint, if any, and whether it was written
        for that very record (see rereads.py); aligned with `candidates`."""
        found: list[Checkpointed | None] = [None] * len(candidates)
        if not candidates:
            return found
        rows = await self._pool.fetch(
            QUERIES["checkpoints_of"],
            [_text(event_id) for event_id, _ in candidates],
            [_text(record.topic) for _, record in candidates],
            [record.partition for _, record in candidates],
            [record.offset for _, record in candidates],
        )
        for n, kind, external_id, same_record in rows:
            # A dict look-up, not EntityKind(kind): this runs once per re-read event.
            entity = None if kind is None else EntityKey(kind=_KINDS[kind], external_id=external_id)
            found[n - 1] = Checkpointed(same_record=same_record, entity=entity)
        return found

    # -- the operator tools' reads ---------------------------------------------------------------

    async def outcomes(self, ids: Sequence[str]) -> dict[str, EventOutcome]:
        """Event id → what became of it; ids without a checkpoint row are absent."""
        found: dict[str, EventOutcome] = {}
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = [_text(i) for i in ids[start : start + LOOKUP_CHUNK]]
            for row in await self._pool.fetch(QUERIES["event_outcomes"], chunk):
                found[row["event_id"]] = EventOutcome(
                    outcome=row["outcome"],
                    kind=row["entity_kind"],
                    reason=row["reason"] if row["outcome"] == "dead_lettered" else None,
                    # Only a dead letter Pivotal answered cost requests (parent_missing or an
                    # invalid event never left).
                    attempts=(row["attempts"] or 0) if row["http_status"] is not None else 0,
                )
        return found

    async def dead_letter_states(self) -> dict[str, int]:
        """Dead letters by state: open, retrying (redriven, not finished), resolved."""
        rows = await self._pool.fetch(QUERIES["dead_letter_states"])
        return {"open": 0, "retrying": 0, "resolved": 0} | {r["state"]: r["n"] for r in rows}

    async def load_entities(self, keys: Sequence[EntityKey]) -> dict[EntityKey, EntityState]:
        """Entity map rows for these keys; unknown keys are absent."""
        if not keys:
            return {}
        rows = await self._pool.fetch(
            QUERIES["load_entities"],
            [k.kind.value for k in keys],
            [_text(k.external_id) for k in keys],
        )
        states = [_entity_state(r) for r in rows]
        return {s.key: s for s in states}

    # -- the daemon's write --------------------------------------------------------------------

    async def record(self, finished: Sequence[Finished], entities: Sequence[EntityState]) -> None:
        """Durably record a batch: checkpoints, entity map and dead letters in one transaction."""
        if not finished and not entities:
            return
        started = time.perf_counter()
        try:
            await self._record(finished, entities)
        except Exception:
            if self._metrics is not None:
                self._metrics.checkpoint_failures.inc()
            raise
        finally:
            if self._metrics is not None:
                self._metrics.checkpoint_duration.observe(time.perf_counter() - started)
        if self._metrics is not None:
            self._metrics.last_checkpoint.set(time.time())

    async def _record(self, finished: Sequence[Finished], entities: Sequence[EntityState]) -> None:
        # Rows go in key order: two replicas writing overlapping keys (during a rebalance) then
        # take row locks in the same order and cannot deadlock.
        checkpoints = _checkpoint_columns(sorted(finished, key=lambda f: f.event_id))
        # One row per key (the last state given wins): ON CONFLICT DO UPDATE may not touch a
        # row twice in one statement.
        latest = {(e.key.kind.value, e.key.external_id): e for e in entities}
        entity_rows = _entity_columns([latest[k] for k in sorted(latest)])
        parked = {f.event_id: f for f in finished if f.dead_letter is not None}
        dead_rows = _dead_letter_columns([parked[k] for k in sorted(parked)])
        settled = sorted(_settled_intents(latest.values(), parked.values()))
        async with self._pool.acquire() as conn, conn.transaction():
            if finished:
                await conn.execute(QUERIES["insert_checkpoints"], *checkpoints)
            if entities:
                await conn.execute(QUERIES["upsert_entities"], *entity_rows)
            if parked:
                await conn.execute(QUERIES["upsert_dead_letters"], *dead_rows)
            if settled:
                await conn.execute(
                    QUERIES["delete_intents"], [k for k, _ in settled], [e for _, e in settled]
                )

    # -- create intents (see daemon/entities.py) -----------------------------------------------

    async def save_intents(self, intents: Sequence[Intent]) -> None:
        """Durably save create intents (one per entity), in one statement; called before
        their POSTs leave."""
        if not intents:
            return
        await self._pool.execute(
            QUERIES["save_intents"],
            [i.key.kind.value for i in intents],
            [_text(i.key.external_id) for i in intents],
            [i.idempotency_key for i in intents],
            [i.parent_id for i in intents],
            # Serialised once here and stored verbatim: a replay re-sends these exact bytes.
            [json.dumps(i.body) for i in intents],
        )

    async def load_intents(self, keys: Sequence[EntityKey]) -> dict[EntityKey, Intent]:
        """The unsettled create intents of these entities."""
        if not keys:
            return {}
        rows = await self._pool.fetch(
            QUERIES["load_intents"],
            [k.kind.value for k in keys],
            [_text(k.external_id) for k in keys],
        )
        intents = [_intent(r) for r in rows]
        return {i.key: i for i in intents}

    # -- operator tools ------------------------------------------------------------------------

    async def dead_letters(
        self,
        *,
        reason: str | None = None,
        status: int | None = None,
        entity: EntityKey | str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[DeadLetterRow]:
        """Dead letters matching every filter given, newest first.

        `entity` is an EntityKey, or a bare external id matching any kind; `since` compares
        with the last time the event was dead-lettered.
        """
        kind, external_id = _entity_filter(entity)
        rows = await self._pool.fetch(
            QUERIES["list_dead_letters"], reason, status, kind, external_id, since, limit
        )
        return [_dead_letter_row(r) for r in rows]

    async def dead_letter(self, id: int) -> DeadLetterRow | None:
        row = await self._pool.fetchrow(QUERIES["get_dead_letter"], id)
        return None if row is None else _dead_letter_row(row)

    async def mark_dead_letters_retried(
        self, ids: Sequence[int], *, max_redrives: int = MAX_REDRIVES
    ) -> list[int]:
        """Stamp these dead letters as redriven; return the ids stamped.

        A dead letter already redriven `max_redrives` times is left alone and not returned:
        the redrive tool sends only what this returns.
        """
        if not ids:
            return []
        rows = await self._pool.fetch(QUERIES["mark_dead_letters_retried"], list(ids), max_redrives)
        return sorted(r["id"] for r in rows)

    async def delete_dead_letters(
        self,
        ids: Sequence[int] | None = None,
        *,
        reason: str | None = None,
        status: int | None = None,
        entity: EntityKey | str | None = None,
        since: datetime | None = None,
    ) -> int:
        """Delete the dead letters matching the ids and every filter given; return how many."""
        if ids is None and reason is None and status is None and entity is None and since is None:
            raise ValueError("delete_dead_letters needs ids or a filter; refusing to delete all")
        kind, external_id = _entity_filter(entity)
        result = await self._pool.execute(
            QUERIES["delete_dead_letters"],
            None if ids is None else list(ids),
            reason,
            status,
            kind,
            external_id,
            since,
        )
        return _row_count(result)

    async def forget_events(self, ids: Sequence[str]) -> int:
        """Delete these checkpoint rows so the events run again; return how many existed."""
        if not ids:
            return 0
        result = await self._pool.execute(QUERIES["forget_events"], [_text(i) for i in ids])
        return _row_count(result)

    async def summary(self) -> StoreSummary:
        """Counts by outcome, dead letters by reason, entities by kind, migrations."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            outcome_rows = await conn.fetch(QUERIES["count_outcomes"])
            dead_rows = await conn.fetch(QUERIES["count_dead_letters"])
            entity_rows = await conn.fetch(QUERIES["count_entities"])
            applied = tuple(r["name"] for r in await conn.fetch(QUERIES["applied_migrations"]))
        outcomes = {o.value: 0 for o in Outcome} | {r["outcome"]: r["n"] for r in outcome_rows}
        lasts = [r["last"] for r in outcome_rows]
        live = {k.value: 0 for k in EntityKind}
        for r in entity_rows:
            if not r["deleted"]:
                live[r["kind"]] = r["n"]
        return StoreSummary(
            outcomes=outcomes,
            last_checkpoint=max(lasts, default=None),
            dead_letters={r["reason"]: r["n"] for r in dead_rows},
            entities=live,
            deleted_entities=sum(r["n"] for r in entity_rows if r["deleted"]),
            migrations_applied=applied,
            migrations_pending=tuple(m.name for m in load_migrations() if m.name not in applied),
        )


# -- rows ↔ records ---------------------------------------------------------------------------


def _text(value: str) -> str:
    # Postgres text cannot hold NUL. It can arrive from outside (a "\u0000" in an event's JSON),
    # and a batch that can never be written would stall the daemon: replace it, deterministically.
    return value.replace("\x00", "\ufffd")


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _settled_intents(
    states: Iterable[EntityState], parked: Iterable[Finished]
) -> set[tuple[str, str]]:
    # An intent is settled once the entity's Pivotal id is durable (this transaction writes it)
    # or its work was dead-lettered. Not on a delete: a re-create may already have saved a new
    # intent that this older batch must not erase.
    keys = {s.key for s in states if s.pivotal_id is not None and not s.deleted}
    keys |= {f.entity for f in parked if f.entity is not None}
    return {(k.kind.value, _text(k.external_id)) for k in keys}


def _checkpoint_columns(finished: Sequence[Finished]) -> list[list[Any]]:
    return [
        [_text(f.event_id) for f in finished],
        [f.outcome.value for f in finished],
        [None if f.entity is None else f.entity.kind.value for f in finished],
        [None if f.entity is None else _text(f.entity.external_id) for f in finished],
        [_opt_text(f.pivotal_id) for f in finished],
        [_text(f.record.topic) for f in finished],
        [f.record.partition for f in finished],
        [f.record.offset for f in finished],
    ]


def _entity_columns(entities: Sequence[EntityState]) -> list[list[Any]]:
    return [
        [e.key.kind.value for e in entities],
        [_text(e.key.external_id) for e in entities],
        [_opt_text(e.pivotal_id) for e in entities],
        [_text(e.customer_external_id) for e in entities],
        [e.last_sequence for e in entities],
        [e.deleted for e in entities],
    ]


def _dead_letter_columns(finished: Sequence[Finished]) -> list[list[Any]]:
    letters = [f.dead_letter for f in finished if f.dead_letter is not None]
    return [
        [_text(f.event_id) for f in finished],
        [_text(d.reason) for d in letters],
        # What came back from outside may echo a secret (a gateway's error page quoting the
        # request's Authorization header); the table is in every backup, so never store one.
        [_text(redact(d.detail)) for d in letters],
        [d.status for d in letters],
        [_opt_text(redact_optional(d.response_body)) for d in letters],
        [d.attempts for d in letters],
        [_text(f.record.topic) for f in finished],
        [f.record.partition for f in finished],
        [f.record.offset for f in finished],
        [f.record.key for f in finished],
        [f.record.value for f in finished],
        [_headers_json(f.record.headers) for f in finished],
        [f.record.timestamp_ms for f in finished],
        [None if f.entity is None else f.entity.kind.value for f in finished],
        [None if f.entity is None else _text(f.entity.external_id) for f in finished],
    ]


def _headers_json(headers: Sequence[tuple[str, bytes]]) -> str:
    # Readable when the value is text, lossless when it is not (jsonb refuses NUL, too).
    encoded: list[list[str]] = []
    for name, value in headers:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = "\x00"
        if "\x00" in text:
            encoded.append([_text(name), base64.b64encode(value).decode("ascii"), "base64"])
        else:
            encoded.append([_text(name), text])
    return json.dumps(encoded)


def _headers_from_json(raw: str) -> tuple[tuple[str, bytes], ...]:
    headers: list[tuple[str, bytes]] = []
    for item in json.loads(raw):
        if len(item) == 3 and item[2] == "base64":
            headers.append((item[0], base64.b64decode(item[1])))
        else:
            headers.append((item[0], item[1].encode("utf-8")))
    return tuple(headers)


def _entity_filter(entity: EntityKey | str | None) -> tuple[str | None, str | None]:
    if isinstance(entity, EntityKey):
        return entity.kind.value, entity.external_id
    return None, entity


def _entity_state(row: asyncpg.Record) -> EntityState:
    return EntityState(
        key=EntityKey(kind=EntityKind(row["kind"]), external_id=row["external_id"]),
        pivotal_id=row["pivotal_id"],
        customer_external_id=row["customer_external_id"],
        last_sequence=row["last_sequence"],
        deleted=row["deleted"],
    )


def _intent(row: asyncpg.Record) -> Intent:
    return Intent(
        key=EntityKey(kind=EntityKind(row["kind"]), external_id=row["external_id"]),
        idempotency_key=row["idempotency_key"],
        parent_id=row["parent_id"],
        body=json.loads(row["body"]),
    )


def _dead_letter_row(row: asyncpg.Record) -> DeadLetterRow:
    entity = None
    if row["entity_kind"] is not None:
        entity = EntityKey(
            kind=EntityKind(row["entity_kind"]), external_id=row["entity_external_id"]
        )
    return DeadLetterRow(
        id=row["id"],
        event_id=row["event_id"],
        dead_letter=DeadLetter(
            reason=row["reason"],
            detail=row["detail"],
            status=row["http_status"],
            response_body=row["response_body"],
            attempts=row["attempts"],
        ),
        record=RecordRef(
            topic=row["topic"],
            partition=row["kafka_partition"],
            offset=row["kafka_offset"],
            key=row["record_key"],
            value=row["record_value"],
            headers=_headers_from_json(row["record_headers"]),
            timestamp_ms=row["record_timestamp_ms"],
        ),
        entity=entity,
        times_seen=row["times_seen"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        retried_at=row["retried_at"],
        retry_count=row["retry_count"],
    )


def _row_count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    return int(status.rpartition(" ")[2])
