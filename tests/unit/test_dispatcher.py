"""The dispatcher against the in-process sandbox: which request each work becomes, and what
becomes of each answer (done, retried, paused, dead-lettered). No sockets: ASGITransport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from daemon.admitted import Admitted
from daemon.backoff import Backoff
from daemon.dispatcher import INTERNAL_ERROR_ATTEMPTS, Dispatcher, idempotency_key
from daemon.entities import EntityCache, Intent
from daemon.events import EntityKey, EntityKind, Event, RecordRef, parse_record
from daemon.metrics import Metrics
from daemon.outcomes import EntityState, Finished, Outcome
from daemon.pivotal import ApiResponse, PivotalClient
from daemon.progress import Progress
from daemon.ratelimit import RateLimiter
from daemon.recorder import Recorder
from daemon.scheduler import Scheduler
from tests.fixtures.sandbox import PAID_KEY, SandboxApp
from tests.unit.pipeline_doubles import KafkaRecords

SOURCE = "pivotal-sync-test"


@dataclass
class MemoryStore:
    """Stands in for Postgres: keeps what the recorder and the dispatcher write."""

    finished: list[Finished] = field(default_factory=list)
    entities: dict[EntityKey, EntityState] = field(default_factory=dict)
    intents: list[Intent] = field(default_factory=list)

    async def record(self, finished: Sequence[Finished], entities: Sequence[EntityState]) -> None:
        self.finished += finished
        self.entities.update({e.key: e for e in entities})

    async def save_intents(self, intents: Sequence[Intent]) -> None:
        self.intents += intents

    def outcomes(self) -> dict[str, str]:
        return {f.event_id: f.outcome.value for f in self.finished}


@dataclass
class Harness:
    sandbox: SandboxApp
    dispatcher: Dispatcher
    scheduler: Scheduler
    entities: EntityCache
    recorder: Recorder
    store: MemoryStore
    metrics: Metrics
    client: BuggyClient
    kafka: KafkaRecords
    offsets: int = 0

    def event(
        self,
        type_: str,
        subject: str,
        data: dict[str, Any] | None = None,
        *,
        sequence: int | None = None,
    ) -> Event:
        self.offsets += 1
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"evt-{self.offsets}",
            "source": "crm/test",
            "type": type_,
            "subject": subject,
        }
        if data is not None:
            body["data"] = data
        if sequence is not None:
            body["sequence"] = str(sequence)
        key = (data or {}).get("customer", subject)
        record = RecordRef(
            topic="t",
            partition=0,
            offset=self.offsets,
            key=key.encode(),
            value=json.dumps(body).encode(),
        )
        self.kafka.publish(record)
        return parse_record(record)

    def submit(self, *events: Event) -> None:
        for event in events:
            assert self.dispatcher.submit(event)

    async def drain(self) -> None:
        """Wait until every submitted event is finished and recorded."""
        for _ in range(500):
            await asyncio.sleep(0.01)
            if self.scheduler.pending_events == 0 and not self.dispatcher.in_flight_partitions():
                break
        await self.recorder.flush()

    async def records(self, kind: str) -> list[dict[str, Any]]:
        answer = await self.sandbox.api.client.get(f"/_sandbox/records?kind={kind}")
        rows: list[dict[str, Any]] = answer.json()[f"{kind}s"]
        return rows

    async def create_lost_by_a_crash(self, **fields: Any) -> str:
        """What a run that died after its create's POST leaves behind: customer cus_1 made in
        Pivotal (its id is returned) and its create intent, which the restart loads."""
        key = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")
        body = {**fields, "metadata": {"external_id": "cus_1", "source": SOURCE}}
        intent = Intent(
            key=key, idempotency_key="pivotal-sync:customer:crashed", parent_id=None, body=body
        )
        answer = await self.sandbox.api.post(
            "/customers",
            content=json.dumps(body, separators=(",", ":"), sort_keys=True),
            headers={"Idempotency-Key": intent.idempotency_key, "Content-Type": "application/json"},
        )
        assert answer.status_code == 201
        self.entities.set_intent(intent)
        created: str = answer.json()["id"]
        return created

    async def requests(self) -> list[str]:
        answer = await self.sandbox.api.client.get("/_sandbox/requests")
        return [f"{r['method']} {r['status']}" for r in answer.json()["requests"]]


class BuggyClient(PivotalClient):
    """The real client with an injected programming error: creating a customer whose name
    starts with "poison" raises, as a bug in the send path would (while `bug` is on)."""

    bug = True

    async def create_customer(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        if self.bug and str(body.get("name", "")).startswith("poison"):
            raise ZeroDivisionError("injected bug")
        return await super().create_customer(body, idempotency_key)


@pytest.fixture
async def harness(sandbox_app: SandboxApp) -> AsyncIterator[Harness]:
    transport = httpx.ASGITransport(app=sandbox_app.app)
    client = BuggyClient(
        base_url="http://sandbox/api/v1", api_key=SecretStr(PAID_KEY), transport=transport
    )
    store, kafka = MemoryStore(), KafkaRecords()
    scheduler, entities, metrics = Scheduler(), EntityCache(), Metrics()
    progress = Progress()
    recorder = Recorder(
        store=store,
        progress=progress,
        metrics=metrics,
        flush_interval_seconds=0.01,
        batch_size=100,
        admitted=Admitted(),
    )
    dispatcher = Dispatcher(
        api=client,
        pacer=RateLimiter(initial_rate_per_minute=6000, max_in_flight=8, metrics=metrics),
        scheduler=scheduler,
        entities=entities,
        recorder=recorder,
        held_records=kafka,
        intents=store,
        metrics=metrics,
        workers=4,
        record_source=SOURCE,
        adopt_slug_conflicts=True,
        parent_timeout_seconds=60,
        auth_probe_interval_seconds=0.05,
        backoff=Backoff(0.001, 0.01),  # instant retries: the schedule is not under test here
    )
    # Progress must know the offsets the recorder will release.
    original_submit = dispatcher.submit

    def tracked_submit(event: Event) -> bool:
        progress.track(event.record.topic, event.record.partition, event.record.offset)
        return original_submit(event)

    dispatcher.submit = tracked_submit  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop, 5.0))
    yield Harness(
        sandbox_app, dispatcher, scheduler, entities, recorder, store, metrics, client, kafka
    )
    stop.set()
    await running
    await client.aclose()


async def test_an_unknown_customer_is_created_once_with_traceable_metadata(
    harness: Harness,
) -> None:
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora", "slug": "aurora"}))
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert customer["name"] == "Aurora"
    assert customer["metadata"] == {"external_id": "cus_1", "source": SOURCE}
    assert harness.store.outcomes() == {"evt-1": "sent"}
    assert harness.store.intents[0].idempotency_key == idempotency_key(
        EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1"), "evt-1"
    )


async def test_a_create_and_three_waiting_updates_cost_one_request(harness: Harness) -> None:
    harness.submit(
        harness.event("customer.created", "cus_1", {"name": "Aurora"}),
        *(harness.event("customer.updated", "cus_1", {"mrr": n}) for n in (1, 2, 3)),
    )
    await harness.drain()
    assert await harness.requests() == ["POST 201"]
    (customer,) = await harness.records("customer")
    assert customer["mrr"] == 3
    outcomes = harness.store.outcomes()
    assert sorted(outcomes.values()) == ["coalesced", "coalesced", "coalesced", "sent"]


async def test_an_event_older_than_an_applied_update_is_stale_after_its_lane_went_idle(
    harness: Harness,
) -> None:
    """The lane's own record of sequences is gone once it is idle: the entity map must then
    know the update's sequence, or a late older event would overwrite the newer value."""
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora"}, sequence=1))
    await harness.drain()
    harness.submit(harness.event("customer.updated", "cus_1", {"mrr": 9}, sequence=9))
    await harness.drain()
    assert harness.scheduler.lanes == 0

    late = harness.event("customer.updated", "cus_1", {"mrr": 5}, sequence=5)
    assert harness.dispatcher.submit_all([late]) == [late]
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert customer["mrr"] == 9
    key = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")
    assert harness.store.entities[key].last_sequence == 9


async def test_a_customer_deleted_and_created_again_is_a_new_customer(harness: Harness) -> None:
    """After the delete is applied, the entity map knows the customer is gone: the next
    upsert creates it again instead of patching the deleted id."""
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora"}))
    await harness.drain()
    harness.submit(harness.event("customer.deleted", "cus_1"))
    await harness.drain()
    key = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")
    assert harness.entities.pivotal_id(key) is None
    assert not harness.entities.customer_ready("cus_1")

    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora II"}))
    await harness.drain()
    gone, customer = await harness.records("customer")  # the sandbox keeps deleted records
    assert (gone["name"], gone["deleted_at"] is not None) == ("Aurora", True)
    assert (customer["name"], customer["deleted_at"]) == ("Aurora II", None)
    assert await harness.requests() == ["POST 201", "DELETE 200", "POST 201"]
    assert not any(f.dead_letter for f in harness.store.finished)


async def test_a_create_replayed_after_a_crash_sends_the_latest_state_of_every_field(
    harness: Harness,
) -> None:
    """An earlier run POSTed the create and PATCHed a later update, then died before either
    outcome was durable: only its create intent was. Re-read, the same events coalesce into
    one create; the replayed POST is answered from Pivotal's idempotency cache and changes
    nothing, so the follow-up PATCH carries every field, including one whose latest value
    equals the intent's (here the status, which the lost run had changed)."""
    created = await harness.create_lost_by_a_crash(name="Aurora", status="onboarding")
    await harness.sandbox.api.patch(f"/customers/{created}", json={"status": "active"})

    harness.submit(
        harness.event(
            "customer.created", "cus_1", {"name": "Aurora", "status": "onboarding"}, sequence=1
        ),
        harness.event("customer.updated", "cus_1", {"status": "active"}, sequence=2),
        harness.event("customer.updated", "cus_1", {"status": "onboarding"}, sequence=3),
    )
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert (customer["id"], customer["status"]) == (created, "onboarding")
    assert await harness.requests() == ["POST 201", "PATCH 200", "POST 201", "PATCH 200"]


async def test_a_delete_after_a_crash_deletes_what_the_lost_create_made(
    harness: Harness,
) -> None:
    """An earlier run's POST made the customer, then the run died: only the create intent was
    durable. Re-read, the delete supersedes the create and nothing says the customer exists,
    except the intent: its POST is replayed (same key: Pivotal answers with the same customer)
    and the customer is deleted."""
    created = await harness.create_lost_by_a_crash(name="Aurora")
    harness.submit(
        harness.event("customer.created", "cus_1", {"name": "Aurora"}, sequence=1),
        harness.event("customer.deleted", "cus_1", sequence=2),
    )
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert customer["id"] == created
    assert customer["deleted_at"] is not None
    assert harness.store.outcomes() == {"evt-1": "superseded", "evt-2": "sent"}
    assert harness.entities.intent(EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")) is None


async def test_a_delete_with_no_trace_of_a_create_costs_no_request(harness: Harness) -> None:
    harness.submit(harness.event("contact.deleted", "ct_1", {"customer": "cus_1"}))
    await harness.drain()
    assert await harness.requests() == []
    assert harness.store.outcomes() == {"evt-1": "noop"}


async def test_a_contact_is_created_under_its_customers_pivotal_id(harness: Harness) -> None:
    harness.submit(
        harness.event(
            "contact.created", "ct_1", {"customer": "cus_1", "name": "Ann", "email": "A@x.io"}
        ),
        harness.event("customer.created", "cus_1", {"name": "Aurora"}),
    )
    await harness.drain()
    (customer,) = await harness.records("customer")
    (contact,) = await harness.records("contact")
    assert contact["customer_id"] == customer["id"]
    assert contact["email"] == "a@x.io"


async def test_a_taken_slug_adopts_the_existing_customer_and_patches_it(harness: Harness) -> None:
    existing = await harness.sandbox.api.customer("Made By Hand", slug="aurora")
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora", "slug": "aurora"}))
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert customer["id"] == existing["id"]
    assert customer["name"] == "Aurora"
    assert customer["metadata"]["external_id"] == "cus_1"
    assert (
        harness.entities.pivotal_id(EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1"))
        == existing["id"]
    )
    assert await harness.requests() == ["POST 201", "POST 409", "GET 200", "PATCH 200"]


async def test_a_create_without_a_name_is_dead_lettered_without_a_request(harness: Harness) -> None:
    harness.submit(harness.event("customer.updated", "cus_1", {"mrr": 5}))
    await harness.drain()
    assert await harness.requests() == []
    (finished,) = harness.store.finished
    assert finished.dead_letter is not None
    assert finished.dead_letter.reason == "missing_field"


async def test_a_delete_of_what_pivotal_never_had_costs_no_request(harness: Harness) -> None:
    harness.submit(harness.event("customer.deleted", "cus_1"))
    await harness.drain()
    assert await harness.requests() == []
    assert harness.store.outcomes() == {"evt-1": "noop"}


async def test_an_update_of_a_customer_deleted_by_hand_is_dead_lettered_and_forgotten(
    harness: Harness,
) -> None:
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora"}))
    await harness.drain()
    (customer,) = await harness.records("customer")
    await harness.sandbox.api.delete(f"/customers/{customer['id']}")
    harness.submit(harness.event("customer.updated", "cus_1", {"mrr": 9}))
    await harness.drain()
    letter = harness.store.finished[-1].dead_letter
    assert letter is not None
    assert (letter.reason, letter.status) == ("deleted_in_pivotal", 404)
    assert (
        harness.entities.pivotal_id(EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1"))
        is None
    )


async def test_a_rejected_field_is_dead_lettered_with_status_and_response_body(
    harness: Harness,
) -> None:
    await harness.sandbox.api.client.post("/_sandbox/rules", json={"reject_field": "plan"})
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora", "plan": "gold"}))
    await harness.drain()
    letter = harness.store.finished[-1].dead_letter
    assert letter is not None
    assert (letter.reason, letter.status) == ("http_400", 400)
    assert letter.response_body is not None
    assert "plan" in letter.response_body


async def test_a_refused_merged_request_dead_letters_each_event_with_its_own_record(
    harness: Harness,
) -> None:
    # The merged events are held as id and position only: their bytes come back from Kafka.
    await harness.sandbox.api.client.post("/_sandbox/rules", json={"reject_field": "plan"})
    events = [
        harness.event("customer.created", "cus_1", {"name": "Aurora"}),
        harness.event("customer.updated", "cus_1", {"plan": "gold"}),
        harness.event("customer.updated", "cus_1", {"mrr": 3}),
    ]
    harness.submit(*events)
    await harness.drain()
    assert await harness.requests() == ["POST 400"]
    letters = {f.event_id: f for f in harness.store.finished}
    assert set(letters) == {e.id for e in events}
    for event in events:
        assert letters[event.id].outcome is Outcome.DEAD_LETTERED
        assert letters[event.id].record == event.record, "exactly what arrived"
    assert harness.kafka.reads == 1


async def test_merged_events_finish_as_coalesced_without_reading_kafka(harness: Harness) -> None:
    harness.submit(
        *(harness.event("customer.updated", "cus_1", {"name": f"v{n}"}) for n in range(4))
    )
    await harness.drain()
    coalesced = [f for f in harness.store.finished if f.outcome is Outcome.COALESCED]
    assert [(f.event_id, f.record.offset) for f in coalesced] == [
        ("evt-1", 1),
        ("evt-2", 2),
        ("evt-3", 3),
    ]
    assert harness.kafka.reads == 0


async def test_a_refused_merged_request_waits_while_kafka_cannot_give_its_records_back(
    harness: Harness,
) -> None:
    # A dead letter without the bytes that arrived is never written for an outage.
    await harness.sandbox.api.client.post("/_sandbox/rules", json={"reject_field": "plan"})
    harness.kafka.down = True
    harness.submit(
        harness.event("customer.created", "cus_1", {"name": "Aurora", "plan": "gold"}),
        harness.event("customer.updated", "cus_1", {"mrr": 3}),
    )
    for _ in range(100):
        await asyncio.sleep(0.01)
        if harness.kafka.reads >= 3:
            break
    await harness.recorder.flush()
    assert harness.kafka.reads >= 3, "retried"
    assert harness.store.finished == []
    harness.kafka.down = False
    await harness.drain()
    assert [f.outcome for f in harness.store.finished] == [Outcome.DEAD_LETTERED] * 2
    assert all(f.record.value is not None for f in harness.store.finished)


async def test_an_orphan_being_dead_lettered_counts_as_in_flight_for_a_rebalance(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its merged records are read back first; meanwhile a revoke must wait for it.
    monkeypatch.setattr(harness.dispatcher, "_parent_timeout", 0.0)
    harness.kafka.down = True
    harness.submit(
        *(harness.event("contact.updated", "ct_1", {"customer": "gone", "title": t}) for t in "ab")
    )
    for _ in range(300):
        await asyncio.sleep(0.01)
        if harness.kafka.reads:
            break
    assert harness.dispatcher.in_flight_partitions() == {("t", 0)}
    harness.kafka.down = False
    await harness.drain()
    letters = [f.dead_letter.reason for f in harness.store.finished if f.dead_letter]
    assert letters == ["parent_missing", "parent_missing"]
    assert harness.dispatcher.in_flight_partitions() == set()


async def test_server_errors_are_retried_and_never_dead_letter(harness: Harness) -> None:
    await harness.sandbox.api.client.post(
        "/_sandbox/faults", json={"fail_next": 2, "error_status": 503}
    )
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora"}))
    await harness.drain()
    assert await harness.requests() == ["POST 503", "POST 503", "POST 201"]
    assert harness.store.outcomes() == {"evt-1": "sent"}
    assert len(await harness.records("customer")) == 1


async def test_a_revoked_key_pauses_sending_until_the_probe_sees_it_work(harness: Harness) -> None:
    await harness.sandbox.api.client.post(f"/_sandbox/keys/{PAID_KEY}/revoke")
    harness.submit(harness.event("customer.created", "cus_1", {"name": "Aurora"}))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if harness.dispatcher.auth_paused:
            break
    assert harness.dispatcher.auth_paused
    await harness.sandbox.api.client.post(f"/_sandbox/keys/{PAID_KEY}/restore")
    await harness.drain()
    assert not harness.dispatcher.auth_paused
    assert harness.store.outcomes() == {"evt-1": "sent"}
    requests = await harness.requests()
    # The refused POST, then only cheap probes until the key works, then the POST again.
    assert requests[0] == "POST 401"
    assert set(requests[1:-2]) <= {"GET 401"}
    assert requests[-2:] == ["GET 200", "POST 201"]


async def test_an_intent_left_by_a_crash_is_replayed_so_no_duplicate_appears(
    harness: Harness,
) -> None:
    # The first run's POST reached Pivotal; the run died before recording the outcome.
    created = await harness.create_lost_by_a_crash(name="Aurora")
    # After the restart more updates were coalesced into the same create.
    harness.submit(
        harness.event("customer.created", "cus_1", {"name": "Aurora"}),
        harness.event("customer.updated", "cus_1", {"mrr": 7}),
    )
    await harness.drain()
    (customer,) = await harness.records("customer")
    assert customer["id"] == created
    assert customer["mrr"] == 7
    assert outcome_of(harness.store.finished, "evt-2") is Outcome.SENT


def outcome_of(finished: Sequence[Finished], event_id: str) -> Outcome:
    return next(f.outcome for f in finished if f.event_id == event_id)


async def test_a_bug_on_one_event_dead_letters_it_as_internal_error_and_the_stream_goes_on(
    harness: Harness,
) -> None:
    harness.submit(
        harness.event("customer.created", "cus_bad", {"name": "poison pill"}),
        harness.event("customer.created", "cus_ok", {"name": "Aurora"}),
    )
    await harness.drain()
    letter = next(f.dead_letter for f in harness.store.finished if f.event_id == "evt-1")
    assert letter is not None
    assert letter.reason == "internal_error"
    # At least INTERNAL_ERROR_ATTEMPTS, and until another event has been seen to succeed (how
    # many more depends on when the other event's answer comes: the retries here are instant).
    attempts = int(letter.detail.removeprefix("ZeroDivisionError after ").split()[0])
    assert attempts >= INTERNAL_ERROR_ATTEMPTS
    assert outcome_of(harness.store.finished, "evt-2") is Outcome.SENT
    assert harness.metrics.internal_errors._value.get() == attempts
    # Never mistaken for the network: no request was retried, none counted as a network retry.
    assert harness.metrics.retries.labels(reason="network")._value.get() == 0
    assert await harness.requests() == ["POST 201"]
    assert not harness.dispatcher.internal_errors_paused


async def test_a_bug_on_many_entities_in_a_row_pauses_instead_of_dead_lettering_them(
    harness: Harness,
) -> None:
    harness.submit(
        *(harness.event("customer.created", f"cus_{n}", {"name": f"poison {n}"}) for n in range(4))
    )
    for _ in range(200):
        await asyncio.sleep(0.01)
        if harness.dispatcher.internal_errors_paused:
            break
    assert harness.dispatcher.internal_errors_paused
    assert harness.metrics.paused.labels(reason="internal_errors")._value.get() == 1
    assert harness.store.finished == []
    harness.client.bug = False  # the fix is deployed: the same events now go through
    await harness.drain()
    assert sorted(harness.store.outcomes().values()) == ["sent"] * 4
    assert not harness.dispatcher.internal_errors_paused
    assert harness.metrics.paused.labels(reason="internal_errors")._value.get() == 0
