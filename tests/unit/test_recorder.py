"""The recorder: an outcome's offset becomes committable only after its checkpoint row is
written; a failed batch is retried and releases nothing until it lands; a dry run releases
nothing ever; durable outcomes settle the admitted ids and forward dead letters. Postgres is an
in-memory double."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

import daemon.recorder
from daemon.admitted import Admitted
from daemon.events import EntityKey, EntityKind, RecordRef
from daemon.metrics import Metrics
from daemon.outcomes import DeadLetter, EntityState, Finished, Outcome
from daemon.progress import Progress
from daemon.recorder import Recorder
from tests.unit.pipeline_doubles import TOPIC, MemoryCheckpoints, finished_count, record

TP = (TOPIC, 0)
CUS_1 = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")
CUS_2 = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_2")


@dataclass
class ForwardedCopies:
    """Stands in for the dead-letter topic: what the recorder forwarded, in order."""

    items: list[Finished] = field(default_factory=list)

    def forward(self, finished: Sequence[Finished]) -> None:
        self.items += finished


@dataclass
class Room:
    recorder: Recorder
    store: MemoryCheckpoints
    progress: Progress
    admitted: Admitted
    metrics: Metrics
    copies: ForwardedCopies


@pytest.fixture(autouse=True)
def instant_write_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry schedule is backoff.py's business; here it only has to be short."""
    monkeypatch.setattr(daemon.recorder, "RETRY_BASE_SECONDS", 0.001)
    monkeypatch.setattr(daemon.recorder, "RETRY_CAP_SECONDS", 0.002)


def build(*, dry_run: bool = False, batch_size: int = 1000, interval: float = 60) -> Room:
    store, progress, admitted, metrics = MemoryCheckpoints(), Progress(), Admitted(), Metrics()
    copies = ForwardedCopies()
    recorder = Recorder(
        store=None if dry_run else store,
        progress=progress,
        metrics=metrics,
        flush_interval_seconds=interval,
        batch_size=batch_size,
        admitted=admitted,
        dead_letter_topic=copies,
    )
    return Room(recorder, store, progress, admitted, metrics, copies)


@pytest.fixture
def room() -> Room:
    return build()


def admitted(room: Room, *records: RecordRef) -> None:
    """What intake does before an event can finish: track its offset, note its id."""
    for item in records:
        room.progress.track(item.topic, item.partition, item.offset)
        room.admitted.add(f"evt-{item.offset}")


def sent(item: RecordRef) -> Finished:
    return Finished(event_id=f"evt-{item.offset}", record=item, outcome=Outcome.SENT, entity=CUS_1)


def dead_lettered(item: RecordRef) -> Finished:
    return Finished(
        event_id=f"evt-{item.offset}",
        record=item,
        outcome=Outcome.DEAD_LETTERED,
        entity=CUS_1,
        dead_letter=DeadLetter(reason="http_422", detail="email is invalid", status=422),
    )


def state(key: EntityKey, pivotal_id: str, sequence: int) -> EntityState:
    return EntityState(
        key=key, pivotal_id=pivotal_id, customer_external_id=key.external_id, last_sequence=sequence
    )


async def wait_for_calls(store: MemoryCheckpoints, calls: int) -> None:
    for _ in range(2000):
        if store.calls >= calls:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the store was called {store.calls} times, expected {calls}")


async def test_an_outcome_is_committable_only_after_its_row_is_written(room: Room) -> None:
    """Buffered outcomes hold the commit position back; the written batch releases it."""
    r0, r1 = record(0, "evt-0"), record(1, "evt-1")
    admitted(room, r0, r1)
    room.recorder.add([sent(r0), sent(r1)], [state(CUS_1, "p1", 1)])
    assert room.progress.committable() == {TP: 0}
    assert room.recorder.backlog == 2

    await room.recorder.flush()
    assert room.store.outcomes() == [("evt-0", 0, "sent"), ("evt-1", 1, "sent")]
    assert room.store.written == {CUS_1: state(CUS_1, "p1", 1)}
    assert room.progress.committable() == {TP: 2}
    assert room.recorder.backlog == 0


async def test_a_failed_write_is_retried_and_releases_nothing_until_it_lands(room: Room) -> None:
    """While Postgres refuses the batch, no offset is released and each failure is counted;
    when it answers, the same batch is written once and released."""
    r0 = record(0, "evt-0")
    admitted(room, r0)
    room.recorder.add([sent(r0)])
    room.store.down = True
    flushing = asyncio.create_task(room.recorder.flush())
    await wait_for_calls(room.store, 3)
    assert not flushing.done()
    assert room.progress.committable() == {TP: 0}
    assert room.copies.items == []
    assert room.metrics.registry.get_sample_value(
        "pivotal_sync_checkpoint_write_failures_total"
    ) == pytest.approx(float(room.store.calls), abs=1)

    room.store.down = False
    await asyncio.wait_for(flushing, 5)
    assert room.store.outcomes() == [("evt-0", 0, "sent")]
    assert room.progress.committable() == {TP: 1}


async def test_a_newer_entity_state_wins_over_the_failed_batchs(room: Room) -> None:
    """A state added while a batch is failing replaces that batch's state of the same entity;
    the batch's other states are still written."""
    r0, r1 = record(0, "evt-0"), record(1, "evt-1")
    admitted(room, r0, r1)
    room.recorder.add([sent(r0)], [state(CUS_1, "p1", 1), state(CUS_2, "p2", 1)])
    room.store.down = True
    flushing = asyncio.create_task(room.recorder.flush())
    await wait_for_calls(room.store, 2)
    room.recorder.add([sent(r1)], [state(CUS_1, "p1", 2)])

    room.store.down = False
    await asyncio.wait_for(flushing, 5)
    assert room.store.written == {CUS_1: state(CUS_1, "p1", 2), CUS_2: state(CUS_2, "p2", 1)}
    assert sorted(room.store.outcomes()) == [("evt-0", 0, "sent"), ("evt-1", 1, "sent")]
    assert room.progress.committable() == {TP: 2}


async def test_a_flush_given_up_by_its_caller_keeps_its_batch_for_the_next_one(
    room: Room,
) -> None:
    """A rebalance bounds the flush it waits for: cancelled mid-write, the batch and its
    entity states stay buffered (nothing released), and the next flush writes them. Lost
    instead, their offsets would never be released and the partition's commits would stop."""
    r0 = record(0, "evt-0")
    admitted(room, r0)
    room.recorder.add([sent(r0)], [state(CUS_1, "p1", 1)])
    room.store.write_delay_seconds = 10.0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(room.recorder.flush(), 0.05)
    assert room.progress.committable() == {TP: 0}
    assert room.recorder.backlog == 1

    room.store.write_delay_seconds = 0.0
    await room.recorder.flush()
    assert room.store.outcomes() == [("evt-0", 0, "sent")]
    assert room.store.written == {CUS_1: state(CUS_1, "p1", 1)}
    assert room.progress.committable() == {TP: 1}


async def test_a_dry_run_releases_nothing() -> None:
    """Without a store nothing is durable, so no offset is ever committable and nothing is
    forwarded or settled."""
    room = build(dry_run=True)
    r0 = record(0, "evt-0")
    admitted(room, r0)
    room.recorder.add([dead_lettered(r0)])
    await room.recorder.flush()
    assert room.recorder.backlog == 0
    assert room.progress.committable() == {TP: 0}
    assert room.copies.items == []
    assert "evt-0" in room.admitted
    assert finished_count(room.metrics, "dead_lettered") == 1  # still logged and counted


async def test_durable_outcomes_settle_their_ids_and_release_the_waiting_copies(room: Room) -> None:
    """Once the original is written, its id leaves the pipeline and the copy that waited for it
    is finished as a duplicate, without a row of its own."""
    original, copy = record(0, "evt-0"), record(1, "evt-0")
    admitted(room, original)
    room.progress.track(TOPIC, 0, 1)
    room.admitted.hold_copy("evt-0", copy)

    room.recorder.add([sent(original)])
    await room.recorder.flush()
    assert "evt-0" not in room.admitted
    assert room.store.outcomes() == [("evt-0", 0, "sent")]
    assert finished_count(room.metrics, "duplicate") == 1
    assert room.progress.committable() == {TP: 2}


async def test_outcomes_durable_already_are_released_without_a_write(room: Room) -> None:
    """add_durable (a replay found in the checkpoint table) releases the offset at once."""
    r0 = record(0, "evt-0")
    room.progress.track(TOPIC, 0, 0)
    room.recorder.add_durable(
        [Finished(event_id="evt-0", record=r0, outcome=Outcome.DUPLICATE, entity=CUS_1)]
    )
    assert room.progress.committable() == {TP: 1}
    assert room.store.calls == 0
    assert finished_count(room.metrics, "duplicate") == 1


async def test_durable_dead_letters_are_forwarded_to_the_dead_letter_topic(room: Room) -> None:
    """The dead-letter topic sees outcomes only after they are durable."""
    r0, r1 = record(0, "evt-0"), record(1, "evt-1")
    admitted(room, r0, r1)
    room.recorder.add([dead_lettered(r0), sent(r1)])
    assert room.copies.items == []
    await room.recorder.flush()
    assert [item.event_id for item in room.copies.items if item.dead_letter] == ["evt-0"]


async def test_run_writes_when_a_batch_is_full_and_once_more_when_stopping() -> None:
    """A full batch wakes the writer long before its interval; at its next tick after `stop`,
    run() writes what is left and returns."""
    room = build(batch_size=2, interval=0.5)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running = asyncio.create_task(room.recorder.run(stop))
    r0, r1, r2 = record(0, "evt-0"), record(1, "evt-1"), record(2, "evt-2")
    admitted(room, r0, r1, r2)
    started = loop.time()
    room.recorder.add([sent(r0), sent(r1)])
    await wait_for_calls(room.store, 1)
    assert loop.time() - started < 0.25  # woken by the full batch, not by the 0.5 s interval
    assert room.progress.committable() == {TP: 2}

    room.recorder.add([sent(r2)])  # below the batch size: waits for the interval
    await asyncio.sleep(0.01)
    assert room.store.calls == 1
    stop.set()
    await asyncio.wait_for(running, 5)
    assert room.progress.committable() == {TP: 3}
