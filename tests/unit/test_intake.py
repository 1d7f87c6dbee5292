"""Intake: how a batch of Kafka records is admitted — tracked, parsed, deduplicated against the
checkpoint table and the pipeline, handed to the dispatcher or finished at once — and how a
Postgres outage or a shutdown pauses it. Postgres is an in-memory double; the dispatcher is the
real one, never run, so what it holds is what intake handed it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import daemon.postgres_outages
from daemon.admitted import Admitted
from daemon.backoff import Backoff
from daemon.dispatcher import Dispatcher
from daemon.entities import EntityCache
from daemon.events import EntityKey, EntityKind, Event, RecordRef
from daemon.formats import Skip
from daemon.formats.mapping import MappingFile
from daemon.intake import Intake
from daemon.metrics import Metrics
from daemon.outcomes import EntityState, Finished, Outcome
from daemon.pivotal import PivotalClient
from daemon.progress import Progress
from daemon.ratelimit import RateLimiter
from daemon.recorder import Recorder
from daemon.scheduler import Scheduler
from tests.unit.pipeline_doubles import (
    TOPIC,
    KafkaRecords,
    MemoryCheckpoints,
    finished_count,
    raw_record,
    record,
)

TP = (TOPIC, 0)
CUS_1 = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")


@dataclass
class Pipeline:
    intake: Intake
    store: MemoryCheckpoints
    scheduler: Scheduler
    recorder: Recorder
    progress: Progress
    admitted: Admitted
    metrics: Metrics
    stop: asyncio.Event


def refuse_requests(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"intake must not reach Pivotal: {request.method} {request.url}")


@pytest.fixture(autouse=True)
def instant_outage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outage backoff's schedule is backoff.py's business; here it only has to be short."""
    monkeypatch.setattr(daemon.postgres_outages, "_backoff", Backoff(0.001, 0.002))


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    store, scheduler, entities = MemoryCheckpoints(), Scheduler(), EntityCache()
    progress, admitted, metrics, stop = Progress(), Admitted(), Metrics(), asyncio.Event()
    recorder = Recorder(
        store=store,
        progress=progress,
        metrics=metrics,
        flush_interval_seconds=60,
        batch_size=1000,
        admitted=admitted,
    )
    api = PivotalClient(
        base_url="http://pivotal.invalid/api/v1",
        api_key=SecretStr("k"),
        transport=httpx.MockTransport(refuse_requests),
    )
    dispatcher = Dispatcher(
        api=api,
        pacer=RateLimiter(initial_rate_per_minute=600, max_in_flight=1, metrics=metrics),
        scheduler=scheduler,
        entities=entities,
        recorder=recorder,
        held_records=KafkaRecords(),
        intents=None,
        metrics=metrics,
        workers=1,
        record_source="test",
        adopt_slug_conflicts=False,
        parent_timeout_seconds=60,
        auth_probe_interval_seconds=60,
    )
    intake = Intake(
        store=store,
        entities=entities,
        dispatcher=dispatcher,
        recorder=recorder,
        progress=progress,
        metrics=metrics,
        admitted=admitted,
        stop=stop,
    )
    yield Pipeline(intake, store, scheduler, recorder, progress, admitted, metrics, stop)
    await api.aclose()


async def wait_for_calls(store: MemoryCheckpoints, calls: int) -> None:
    for _ in range(2000):
        if store.calls >= calls:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the store was called {store.calls} times, expected {calls}")


async def test_every_record_is_tracked_in_offset_order_before_anything_finishes(
    pipeline: Pipeline,
) -> None:
    """Each admitted record's offset is tracked, so the commit position stays at the first."""
    await pipeline.intake.admit([record(5, "evt-5"), record(6, "evt-6"), record(9, "evt-9")])
    assert pipeline.progress.pending(TP) == 3
    assert pipeline.progress.committable() == {TP: 5}
    assert pipeline.scheduler.pending_events == 3


async def test_an_invalid_record_is_dead_lettered_without_reaching_the_dispatcher(
    pipeline: Pipeline,
) -> None:
    """A record that is not an event becomes a dead letter with its reason, never a request."""
    await pipeline.intake.admit([raw_record(3, b"{not json")])
    assert pipeline.scheduler.pending_events == 0
    await pipeline.recorder.flush()
    (row,) = pipeline.store.finished
    assert row.event_id == "record:crm:0:3"
    assert row.outcome is Outcome.DEAD_LETTERED
    assert row.dead_letter is not None
    assert row.dead_letter.reason == "invalid_json"
    assert pipeline.progress.committable() == {TP: 4}


async def test_an_id_in_the_checkpoint_table_is_skipped_as_a_duplicate(pipeline: Pipeline) -> None:
    """An event finished before (a replay) is released at once, with no request and no new row."""
    pipeline.store.done.add("evt-1")
    await pipeline.intake.admit([record(0, "evt-1"), record(1, "evt-2")])
    assert pipeline.scheduler.pending_events == 1  # only evt-2
    assert finished_count(pipeline.metrics, "duplicate") == 1
    assert pipeline.progress.committable() == {TP: 1}  # offset 0 done, evt-2 still running
    await pipeline.recorder.flush()
    assert pipeline.store.finished == []


async def test_a_record_reread_after_it_finished_is_skipped_without_being_parsed(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group reset re-reads a record whose row was written for it: skipped unparsed, its
    entity taken from the row; a copy of that event at another offset still takes the full
    path and is a duplicate too."""
    first = record(0, "evt-1")
    pipeline.store.finished.append(
        Finished(event_id="evt-1", record=first, outcome=Outcome.SENT, entity=CUS_1)
    )
    pipeline.store.done.add("evt-1")
    decoded: list[int] = []
    real_decode = MappingFile.decode

    def counting_decode(
        self: MappingFile, ref: RecordRef, document: dict[str, Any] | None = None
    ) -> Event | Skip:
        decoded.append(ref.offset)
        return real_decode(self, ref, document)

    monkeypatch.setattr(MappingFile, "decode", counting_decode)
    await pipeline.intake.admit([first, record(5, "evt-1"), record(6, "evt-2")])
    assert decoded == [5, 6]
    assert finished_count(pipeline.metrics, "duplicate") == 2
    assert pipeline.scheduler.pending_events == 1  # only evt-2
    assert pipeline.progress.committable() == {TP: 6}


async def test_a_fresh_record_is_decoded_from_the_json_read_for_the_look_up(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The value is read once (orjson, for the id hint) and that reading is what the format
    decodes; one with an integer beyond 64 bits, which orjson would turn into a float, is read
    again by the stdlib decoder and its number reaches the event exact."""
    handed: list[bool] = []
    real_decode = MappingFile.decode

    def watching_decode(
        self: MappingFile, ref: RecordRef, document: dict[str, Any] | None = None
    ) -> Event | Skip:
        handed.append(document is not None)
        return real_decode(self, ref, document)

    monkeypatch.setattr(MappingFile, "decode", watching_decode)
    big = 2**64 + 1
    await pipeline.intake.admit(
        [record(0, "evt-1"), record(1, "evt-2", "cus_2", data={"metadata": {"big": big}})]
    )
    assert handed == [True, False]
    works = pipeline.scheduler.take_ready(lambda customer: True, 10)
    [fields] = [work.fields for work in works if work.entity.external_id == "cus_2"]
    assert fields["metadata"] == {"big": big}
    assert type(fields["metadata"]["big"]) is int


async def test_an_invalid_record_reread_is_found_by_its_record_id(pipeline: Pipeline) -> None:
    """A dead-lettered record has no usable id of its own: its row is found by record id."""
    bad = raw_record(0, b'{"id": "evt-9", "type": "customer.renamed"}')
    pipeline.store.done.add(Finished.record_id(bad))
    await pipeline.intake.admit([bad])
    assert finished_count(pipeline.metrics, "duplicate", kind="unknown") == 1
    assert pipeline.progress.committable() == {TP: 1}


async def test_a_second_copy_of_an_admitted_id_waits_until_the_original_is_durable(
    pipeline: Pipeline,
) -> None:
    """A copy of an event still in the pipeline is held, then finished as a duplicate only once
    the original's outcome is written — never before, and without a row of its own."""
    original, copy = record(0, "evt-1"), record(1, "evt-1")
    await pipeline.intake.admit([original])
    await pipeline.intake.admit([copy])
    assert pipeline.scheduler.pending_events == 1  # the copy was not handed on
    assert "evt-1" in pipeline.admitted

    pipeline.recorder.add(
        [Finished(event_id="evt-1", record=original, outcome=Outcome.SENT, entity=CUS_1)]
    )
    assert pipeline.progress.pending(TP) == 2  # buffered is not durable: both still open
    assert finished_count(pipeline.metrics, "duplicate") == 0

    await pipeline.recorder.flush()
    assert pipeline.store.outcomes() == [("evt-1", 0, "sent")]
    assert finished_count(pipeline.metrics, "duplicate") == 1
    assert pipeline.progress.committable() == {TP: 2}
    assert "evt-1" not in pipeline.admitted


async def test_an_event_not_newer_than_the_applied_sequence_is_finished_as_stale(
    pipeline: Pipeline,
) -> None:
    """With the entity map at sequence 5, sequence 5 is stale and sequence 6 goes on."""
    pipeline.store.states[CUS_1] = EntityState(
        key=CUS_1, pivotal_id="p1", customer_external_id="cus_1", last_sequence=5
    )
    await pipeline.intake.admit(
        [record(0, "evt-old", sequence="5"), record(1, "evt-new", sequence="6")]
    )
    assert pipeline.scheduler.pending_events == 1
    assert pipeline.metrics.pending_events._value.get() == 1  # set once for the batch
    await pipeline.recorder.flush()
    assert pipeline.store.outcomes() == [("evt-old", 0, "stale")]
    assert pipeline.progress.committable() == {TP: 1}


async def test_a_postgres_outage_pauses_admission_until_it_answers_again(
    pipeline: Pipeline,
) -> None:
    """While the dedupe query fails, nothing is admitted; when Postgres is back, all of it is."""
    pipeline.store.down = True
    admitting = asyncio.create_task(pipeline.intake.admit([record(0, "evt-1"), record(1, "evt-2")]))
    await wait_for_calls(pipeline.store, 3)
    assert not admitting.done()
    assert pipeline.scheduler.pending_events == 0
    assert pipeline.progress.pending(TP) == 2  # tracked, so their offsets are not committed

    pipeline.store.down = False
    await asyncio.wait_for(admitting, 5)
    assert pipeline.scheduler.pending_events == 2
    assert "evt-1" in pipeline.admitted
    assert "evt-2" in pipeline.admitted


async def test_an_outage_while_loading_entities_is_waited_out_too(pipeline: Pipeline) -> None:
    """The entity-map load after the dedupe query retries as well, then admits the event."""
    pipeline.store.states[CUS_1] = EntityState(
        key=CUS_1, pivotal_id="p1", customer_external_id="cus_1", last_sequence=9
    )
    original_load = pipeline.store.load_entities
    failures = 2

    async def flaky_load(keys: list[EntityKey]) -> dict[EntityKey, EntityState]:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("connection reset")
        return await original_load(keys)

    pipeline.store.load_entities = flaky_load  # type: ignore[method-assign]
    await pipeline.intake.admit([record(0, "evt-1", sequence="3")])
    assert failures == 0
    # The load landed: the entity's sequence 9 made the event stale instead of sending it.
    await pipeline.recorder.flush()
    assert pipeline.store.outcomes() == [("evt-1", 0, "stale")]


async def test_a_shutdown_during_an_outage_leaves_the_records_unfinished(
    pipeline: Pipeline,
) -> None:
    """Stopping while Postgres is down ends admission quietly; the records stay uncommitted, so
    they are delivered again after the restart."""
    pipeline.store.down = True
    admitting = asyncio.create_task(pipeline.intake.admit([record(7, "evt-1"), record(8, "evt-2")]))
    await wait_for_calls(pipeline.store, 2)
    pipeline.stop.set()
    await asyncio.wait_for(admitting, 5)  # returns: Stopped is not an error of admit()
    assert pipeline.scheduler.pending_events == 0
    assert pipeline.progress.pending(TP) == 2
    assert pipeline.progress.committable() == {TP: 7}
    assert "evt-1" not in pipeline.admitted
    assert pipeline.recorder.backlog == 0
