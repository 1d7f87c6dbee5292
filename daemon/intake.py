"""Admission: a batch of Kafka records becomes scheduled events or immediate outcomes.

For each record, in offset order: track its offset; skip it undecoded when this very record
finished before (a re-read, see rereads.py); decode it with its topic's format
(daemon/formats/: invalid → dead letter, a record that asks for nothing → noop, neither costs a
request); skip it if its event id is finished already (the checkpoint table; a copy of an id
still in the pipeline waits for the original to be durable); otherwise hand it to the
dispatcher, which refuses it if its `sequence` is not newer than one applied or waiting for
the same entity (stale). Postgres is asked once per batch, not once per record (a second time
only for records whose id is not their hint: tombstones, invalid or skipped records, formats
whose id is not the JSON's top-level `id`), and an outage pauses admission instead of crashing
it. The JSON read for the look-up is the one the format decodes, where it may be (rereads.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import structlog

from daemon.admitted import Admitted
from daemon.backoff import Stopped
from daemon.dispatcher import Dispatcher
from daemon.entities import EntityCache, EntityStore
from daemon.errors import InvalidEventError
from daemon.events import EntityKey, EntityKind, Event, RecordRef
from daemon.formats import Skip
from daemon.formats.mapping import MappingFile
from daemon.limits import Limits, record_bytes
from daemon.metrics import Metrics
from daemon.outcomes import DeadLetter, Finished, Outcome
from daemon.postgres_outages import through_outages
from daemon.progress import Progress
from daemon.recorder import Recorder
from daemon.rereads import NOTHING, CheckpointsOf, Peek, look_up, peek
from daemon.scheduler import PendingRequest

log = structlog.get_logger("pivotal_sync.intake")


class CheckpointLookup(EntityStore, CheckpointsOf, Protocol):
    async def finished_ids(self, ids: Sequence[str]) -> set[str]: ...


class Intake:
    def __init__(
        self,
        *,
        store: CheckpointLookup,
        entities: EntityCache,
        dispatcher: Dispatcher,
        recorder: Recorder,
        progress: Progress,
        metrics: Metrics,
        admitted: Admitted,
        mapping: MappingFile | None = None,
        stop: asyncio.Event | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._store = store
        # How each topic's records become events; None: the built-in contract everywhere.
        self._mapping = mapping if mapping is not None else MappingFile.builtin()
        self._entities = entities
        self._dispatcher = dispatcher
        self._recorder = recorder
        self._progress = progress
        self._metrics = metrics
        # Ids admitted but not durable yet: a second copy in the stream waits there.
        self._admitted = admitted
        self._stop = stop if stop is not None else asyncio.Event()
        self._limits = limits if limits is not None else Limits()
        # Revocations so far, and the count at which each partition was last revoked. The
        # revoke runs in aiokafka's coordinator task, so it can happen while an admission
        # waits on Postgres: that admission then drops the records of those partitions
        # (queued after the revoke dropped the waiting works, they would be sent by a daemon
        # that no longer owns them, and ahead of their own older events read again).
        self._revocations = 0
        self._revoked_at: dict[tuple[str, int], int] = {}

    def revoking(self, partitions: Collection[tuple[str, int]]) -> None:
        """These partitions are being given up: an admission under way drops their records."""
        self._revocations += 1
        for tp in partitions:
            self._revoked_at[tp] = self._revocations

    def _revoked_since(self, revocations: int) -> set[tuple[str, int]]:
        if revocations == self._revocations:
            return set()
        return {tp for tp, at in self._revoked_at.items() if at > revocations}

    def release(self, works: Sequence[PendingRequest]) -> None:
        """Works dropped unfinished (their partition was revoked): forget we admitted their
        events, and reload their entities from Postgres when they come back."""
        self._admitted.drop(event_id for work in works for event_id in work.event_ids())
        self._entities.forget({work.entity for work in works})

    async def admit(self, records: Sequence[RecordRef]) -> None:
        try:
            await self._admit(records)
        except Stopped:
            # Shutting down during a Postgres outage: these records stay unfinished, so their
            # offsets are not committed and they are delivered again after the restart.
            log.info("intake_abandoned", records=len(records))

    async def _admit(self, records: Sequence[RecordRef]) -> None:
        self._track(records)
        revocations = self._revocations
        peeks = [self._peek(record) for record in records]
        hints = [p.hint for p in peeks]
        found = await through_outages(
            lambda: look_up(self._store, list(records), hints), self._stop, "checkpoints_of"
        )
        replayed: list[Finished] = []
        # (record, decoded, event id, finished: None when the look-up did not ask for this id)
        decoded: list[tuple[RecordRef, Event | Skip | InvalidEventError, str, bool | None]] = []
        for record, peeked, checkpoint in zip(records, peeks, found, strict=True):
            hint = peeked.hint
            if hint is not None and checkpoint is not None and checkpoint.same_record:
                # This very record finished before (see rereads.py): no decoding, no request.
                replayed.append(self._replayed(hint, record, checkpoint.entity))
                continue
            item = self._decode(record, peeked.document())
            event_id = self._id(record, item)
            answered = event_id == hint
            decoded.append((record, item, event_id, checkpoint is not None if answered else None))
        unanswered = [event_id for _, _, event_id, done in decoded if done is None]
        done_ids = (
            await through_outages(
                lambda: self._store.finished_ids(unanswered), self._stop, "finished_ids"
            )
            if unanswered
            else set()
        )
        gone = self._revoked_since(revocations)
        if gone:
            decoded = [d for d in decoded if (d[0].topic, d[0].partition) not in gone]
            replayed = [f for f in replayed if (f.record.topic, f.record.partition) not in gone]
        fresh: list[Event] = []
        for record, item, event_id, done in decoded:
            if done or (done is None and event_id in done_ids):
                replayed.append(self._skip(event_id, record, item, Outcome.DUPLICATE))
            elif event_id in self._admitted:
                self._admitted.hold_copy(event_id, record)
            elif isinstance(item, InvalidEventError):
                self._admitted.add(event_id)
                self._recorder.add([self._invalid(event_id, record, item)])
            elif isinstance(item, Skip):
                self._admitted.add(event_id)
                log.debug("record_skipped", reason=item.reason, detail=item.detail)
                self._recorder.add([self._skip(event_id, record, item, Outcome.NOOP)])
            else:
                self._admitted.add(event_id)
                fresh.append(item)
        # A re-read is mostly replayed events: released together, in one call.
        if replayed:
            self._recorder.add_durable(replayed)
        if fresh:
            await self._submit(fresh, revocations)

    def _track(self, records: Sequence[RecordRef]) -> None:
        """Track every record's offset (in order), one call per partition; count them."""
        offsets: dict[tuple[str, int], list[int]] = {}
        for record in records:
            offsets.setdefault((record.topic, record.partition), []).append(record.offset)
        for (topic, partition), tracked in offsets.items():
            self._progress.track_many(topic, partition, tracked)
            self._metrics.events_consumed.labels(topic=topic, partition=str(partition)).inc(
                len(tracked)
            )

    def _peek(self, record: RecordRef) -> Peek:
        # A record over the size limit is never decoded, not even for its id. Only the size:
        # the raw depth scan costs more than the rest of a re-read record (measured 29 against
        # 13 µs per event), and orjson refuses deep nesting by itself (no hint, full path).
        if record_bytes(record) > self._limits.max_record_bytes:
            return NOTHING
        return peek(record)

    def _decode(
        self, record: RecordRef, document: dict[str, Any] | None
    ) -> Event | Skip | InvalidEventError:
        try:
            return self._parse(record, document)
        except InvalidEventError as exc:
            return exc

    async def _submit(self, fresh: Sequence[Event], revocations: int) -> None:
        """Hand new events to the dispatcher, their entities loaded first; stale ones finish."""
        keys = self._keys(fresh)
        await through_outages(
            lambda: self._entities.load(self._store, keys), self._stop, "load_entities"
        )
        gone = self._revoked_since(revocations)
        if gone:
            self._admitted.drop(e.id for e in fresh if (e.record.topic, e.record.partition) in gone)
            fresh = [e for e in fresh if (e.record.topic, e.record.partition) not in gone]
        plausible = [event for event in fresh if self._plausible(event)]
        stale = [
            self._skip(event.id, event.record, event, Outcome.STALE)
            for event in self._dispatcher.submit_all(plausible)
        ]
        if stale:
            self._recorder.add(stale)

    def _parse(self, record: RecordRef, document: dict[str, Any] | None) -> Event | Skip:
        # The size is checked before decoding (a 10 MB value is never parsed), the depth and
        # field lengths after: a hostile record is refused before any request is built. A
        # document already decoded is checked the same way, in the same order.
        self._limits.check_record(record)
        item = self._mapping.decode(record, document)
        if isinstance(item, Event):
            self._limits.check_event(item)
        return item

    def _plausible(self, event: Event) -> bool:
        """False (and dead-lettered) when its sequence runs implausibly far ahead of the
        entity's history: accepted, it would make every later real update look stale."""
        state = self._entities.get(event.entity)
        try:
            self._limits.check_sequence(event, None if state is None else state.last_sequence)
        except InvalidEventError as exc:
            self._recorder.add([self._invalid(event.id, event.record, exc)])
            return False
        return True

    @staticmethod
    def _id(record: RecordRef, item: Event | Skip | InvalidEventError) -> str:
        return item.id if isinstance(item, Event) else Finished.record_id(record)

    @staticmethod
    def _keys(events: Sequence[Event]) -> list[EntityKey]:
        keys = {e.entity for e in events}
        # Distinct customers first: a backfill's batch holds many events of each, and a key
        # built per event cost more than the set it went into.
        customers = {e.customer_external_id for e in events}
        keys.update(EntityKey(kind=EntityKind.CUSTOMER, external_id=c) for c in customers)
        return list(keys)

    @staticmethod
    def _skip(
        event_id: str, record: RecordRef, item: Event | Skip | InvalidEventError, outcome: Outcome
    ) -> Finished:
        entity = item.entity if isinstance(item, Event) else None
        return Finished(event_id=event_id, record=record, outcome=outcome, entity=entity)

    @staticmethod
    def _replayed(event_id: str, record: RecordRef, entity: EntityKey | None) -> Finished:
        return Finished(event_id=event_id, record=record, outcome=Outcome.DUPLICATE, entity=entity)

    @staticmethod
    def _invalid(event_id: str, record: RecordRef, error: InvalidEventError) -> Finished:
        return Finished(
            event_id=event_id,
            record=record,
            outcome=Outcome.DEAD_LETTERED,
            dead_letter=DeadLetter(reason=error.reason, detail=error.detail),
        )
