"""Scheduler: per-customer lanes, coalescing, supersession, parent gating, fairness, orphans."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events import Action, EntityKey, EntityKind, Event, RecordRef
from daemon.scheduler import PendingRequest, Scheduler

CUSTOMER, CONTACT, ONBOARDING = EntityKind.CUSTOMER, EntityKind.CONTACT, EntityKind.ONBOARDING
UPSERT, DELETE = Action.UPSERT, Action.DELETE
_offsets = itertools.count()


def make_event(
    kind: EntityKind = CUSTOMER,
    external_id: str = "cus_1",
    action: Action = UPSERT,
    *,
    customer: str | None = None,
    fields: dict[str, Any] | None = None,
    sequence: int | None = None,
    offset: int | None = None,
) -> Event:
    offset = next(_offsets) if offset is None else offset
    return Event(
        id=f"evt_{offset}",
        type=f"{kind}.{'deleted' if action is DELETE else 'updated'}",
        source="test",
        entity=EntityKey(kind=kind, external_id=external_id),
        action=action,
        customer_external_id=customer or (external_id if kind is CUSTOMER else "cus_1"),
        fields=(fields or {}) if action is UPSERT else {},
        sequence=sequence,
        record=RecordRef(topic="crm", partition=0, offset=offset, key=None, value=None),
    )


def customer(action: Action = UPSERT, external_id: str = "cus_1", **kw: Any) -> Event:
    return make_event(CUSTOMER, external_id, action, **kw)


def contact(action: Action = UPSERT, external_id: str = "ct_1", **kw: Any) -> Event:
    return make_event(CONTACT, external_id, action, **kw)


def always(_: str) -> bool:
    return True


def never(_: str) -> bool:
    return False


def filled(*events: Event) -> Scheduler:
    scheduler = Scheduler()
    for event in events:
        assert scheduler.add(event, now=0.0)
    return scheduler


def take_one(
    scheduler: Scheduler, parent_ready: Callable[[str], bool] = always
) -> PendingRequest | None:
    works = scheduler.take_ready(parent_ready, limit=1)
    return works[0] if works else None


def drain(
    scheduler: Scheduler, parent_ready: Callable[[str], bool] = always
) -> list[PendingRequest]:
    """Take and finish works one by one until nothing is ready."""
    order = []
    while (work := take_one(scheduler, parent_ready)) is not None:
        order.append(work)
        scheduler.done(work)
    return order


# -- coalescing ---------------------------------------------------------------------------------


def test_three_updates_of_one_customer_coalesce_into_one_work() -> None:
    events = [
        customer(fields={"name": "A"}),
        customer(fields={"plan": "pro"}),
        customer(fields={"name": "B"}),
    ]
    scheduler = filled(*events)
    [work] = drain(scheduler)
    assert work.event_ids() == [e.id for e in events]
    assert work.fields == {"name": "B", "plan": "pro"}
    assert work.carrier is events[-1]
    assert work.first_event_id == events[0].id, "the create's Idempotency-Key stays the same"


def test_a_later_metadata_object_replaces_the_earlier_one() -> None:
    scheduler = filled(
        customer(fields={"metadata": {"a": 1}}), customer(fields={"metadata": {"b": 2}})
    )
    [work] = drain(scheduler)
    assert work.fields == {"metadata": {"b": 2}}


def test_merging_does_not_change_the_events_fields() -> None:
    first = customer(fields={"name": "A"})
    scheduler = filled(first, customer(fields={"name": "B"}))
    drain(scheduler)
    assert first.fields == {"name": "A"}


def test_a_backlog_of_three_updates_per_customer_costs_one_request_per_customer() -> None:
    scheduler = Scheduler()
    for round_ in range(3):
        for n in range(500):
            scheduler.add(customer(external_id=f"cus_{n}", fields={"round": round_}), now=0.0)
    works = drain(scheduler)
    assert len(works) == 500
    assert all(work.fields == {"round": 2} and work.event_count == 3 for work in works)


def test_nothing_is_merged_into_the_work_in_flight() -> None:
    scheduler = filled(customer(fields={"name": "A"}))
    flying = take_one(scheduler)
    later = customer(fields={"name": "B"})
    scheduler.add(later, now=1.0)
    assert flying is not None
    assert flying.fields == {"name": "A"}
    assert take_one(scheduler) is None, "the lane is busy"
    scheduler.done(flying)
    assert drain(scheduler)[0].event_ids() == [later.id]


def test_a_requeued_work_is_retried_unchanged_and_nothing_merges_into_it() -> None:
    first = customer(fields={"name": "A"})
    scheduler = filled(first)
    work = take_one(scheduler)
    assert work is not None
    later = customer(fields={"name": "B"})
    scheduler.add(later, now=1.0)
    scheduler.requeue(work)
    works = drain(scheduler)
    assert [w.event_ids() for w in works] == [[first.id], [later.id]]
    assert works[0] is work
    assert work.fields == {"name": "A"}


def test_a_requeued_upsert_is_not_superseded_by_a_later_delete() -> None:
    scheduler = filled(customer(fields={"name": "A"}))
    work = take_one(scheduler)
    assert work is not None
    scheduler.requeue(work)
    scheduler.add(customer(DELETE), now=1.0)
    assert [w.action for w in drain(scheduler)] == [UPSERT, DELETE]


def test_deletes_of_one_entity_coalesce() -> None:
    scheduler = filled(contact(DELETE), contact(DELETE))
    [work] = drain(scheduler)
    assert work.event_count == 2


# -- supersession -------------------------------------------------------------------------------


def test_a_delete_supersedes_the_waiting_upserts_of_its_entity() -> None:
    upserts = [contact(fields={"name": "A"}), contact(fields={"name": "B"})]
    delete = contact(DELETE)
    scheduler = filled(*upserts, delete)
    [work] = drain(scheduler)
    assert work.action is DELETE
    assert work.carrier is delete
    assert not work.merged
    assert work.superseded.ids() == [e.id for e in upserts]
    assert work.fields == {}
    assert scheduler.pending_events == 0


def test_a_superseding_delete_carries_the_highest_sequence() -> None:
    scheduler = filled(contact(sequence=4), contact(DELETE))
    [work] = drain(scheduler)
    assert work.sequence == 4


def test_an_upsert_after_a_waiting_delete_is_a_new_work() -> None:
    scheduler = filled(contact(DELETE), contact(fields={"name": "again"}))
    assert [w.action for w in drain(scheduler)] == [DELETE, UPSERT]


def test_a_customer_delete_does_not_supersede_its_upsert_while_a_child_waits() -> None:
    scheduler = filled(
        customer(fields={"name": "A"}), contact(fields={"name": "C"}), customer(DELETE)
    )
    kinds = [(w.entity.kind, w.action) for w in drain(scheduler)]
    assert kinds == [(CUSTOMER, UPSERT), (CONTACT, UPSERT), (CUSTOMER, DELETE)]


def test_a_customer_delete_supersedes_its_upsert_when_no_child_waits() -> None:
    scheduler = filled(customer(fields={"name": "A"}), customer(DELETE))
    [work] = drain(scheduler)
    assert work.action is DELETE
    assert len(work.superseded) == 1


# -- order and gating ---------------------------------------------------------------------------


def test_a_contact_waits_for_its_customer_to_have_a_pivotal_id() -> None:
    scheduler = filled(contact(fields={"name": "C"}))
    assert take_one(scheduler, never) is None
    assert take_one(scheduler, always) is not None


def test_a_blocked_child_does_not_block_its_customers_create() -> None:
    scheduler = filled(contact(fields={"name": "C"}), customer(fields={"name": "A"}))
    work = take_one(scheduler, never)
    assert work is not None
    assert work.entity.kind is CUSTOMER


def test_child_deletes_are_not_gated() -> None:
    scheduler = filled(contact(DELETE))
    assert take_one(scheduler, never) is not None


def test_a_child_delete_supersedes_its_blocked_upsert_and_runs_without_its_parent() -> None:
    scheduler = filled(contact(fields={"name": "C"}), contact(DELETE))
    work = take_one(scheduler, never)
    assert work is not None
    assert work.action is DELETE
    assert len(work.superseded) == 1


def test_a_later_work_of_an_entity_never_overtakes_an_earlier_blocked_one() -> None:
    scheduler = filled(contact(fields={"name": "C"}))
    flying = take_one(scheduler)
    assert flying is not None
    scheduler.requeue(flying)  # handed out once, so frozen: the delete cannot supersede it
    scheduler.add(contact(DELETE), now=0.0)
    assert take_one(scheduler, never) is None, "the delete waits behind the blocked upsert"


def test_a_customer_delete_does_not_overtake_an_earlier_blocked_child() -> None:
    scheduler = filled(contact(fields={"name": "C"}), customer(DELETE))
    assert take_one(scheduler, never) is None
    [first, second] = drain(scheduler, always)
    assert (first.entity.kind, second.entity.kind) == (CONTACT, CUSTOMER)


def test_nothing_overtakes_a_waiting_customer_delete() -> None:
    scheduler = filled(
        customer(DELETE), contact(fields={"name": "C"}), contact(DELETE, external_id="ct_2")
    )
    order = [(w.entity.kind, w.action) for w in drain(scheduler, always)]
    assert order[0] == (CUSTOMER, DELETE)


def test_a_child_upsert_is_not_merged_into_a_work_in_front_of_a_customer_delete() -> None:
    scheduler = filled(contact(fields={"a": 1}), customer(DELETE), contact(fields={"b": 2}))
    works = drain(scheduler, always)
    assert [w.fields for w in works] == [{"a": 1}, {}, {"b": 2}]


def test_one_lane_never_has_two_works_in_flight() -> None:
    scheduler = filled(
        customer(fields={"a": 1}), contact(fields={"b": 2}), contact(DELETE, external_id="x")
    )
    assert len(scheduler.take_ready(always, limit=10)) == 1
    assert scheduler.take_ready(always, limit=10) == []
    assert scheduler.busy_lanes == 1


def test_different_lanes_run_in_parallel_up_to_the_limit() -> None:
    scheduler = filled(*(customer(external_id=f"cus_{n}") for n in range(5)))
    assert len(scheduler.take_ready(always, limit=3)) == 3
    assert len(scheduler.take_ready(always, limit=3)) == 2
    assert scheduler.busy_lanes == 5


def test_lanes_take_turns_so_a_hot_customer_cannot_starve_others() -> None:
    hot = [contact(external_id=f"ct_{n}", customer="hot") for n in range(5)]
    scheduler = filled(*hot, customer(external_id="cold"))
    first = take_one(scheduler)
    assert first is not None
    assert first.lane == "hot"
    scheduler.done(first)
    second = take_one(scheduler)
    assert second is not None
    assert second.lane == "cold"


def test_a_blocked_lane_does_not_hold_up_ready_ones() -> None:
    scheduler = filled(contact(customer="orphan"), customer(external_id="cus_2"))
    works = scheduler.take_ready(lambda lane: lane != "orphan", limit=2)
    assert [w.lane for w in works] == ["cus_2"]


# -- stale events -------------------------------------------------------------------------------


def test_an_event_not_newer_than_the_applied_sequence_is_refused_as_stale() -> None:
    scheduler = Scheduler()
    assert not scheduler.add(customer(sequence=5), now=0.0, applied_sequence=5)
    assert scheduler.add(customer(sequence=6), now=0.0, applied_sequence=5)
    assert scheduler.add(customer(), now=0.0, applied_sequence=5), "no sequence: never stale"


def test_an_event_not_newer_than_one_held_in_its_lane_is_refused_as_stale() -> None:
    scheduler = filled(contact(sequence=7))
    flying = take_one(scheduler)
    assert not scheduler.add(contact(sequence=6), now=0.0), "older than the work in flight"
    assert scheduler.add(contact(external_id="ct_2", sequence=1), now=0.0), "another entity"
    assert flying is not None


def test_a_stale_event_leaves_no_lane_behind() -> None:
    scheduler = Scheduler()
    scheduler.add(customer(sequence=1), now=0.0, applied_sequence=3)
    assert (scheduler.lanes, scheduler.pending_events) == (0, 0)


# -- orphans ------------------------------------------------------------------------------------


def test_an_orphan_expires_after_the_timeout() -> None:
    scheduler = Scheduler()
    orphan = contact(customer="gone")
    scheduler.add(orphan, now=100.0)
    assert scheduler.expire_orphans(now=159.0, timeout=60.0, parent_ready=never) == []
    [expired] = scheduler.expire_orphans(now=160.0, timeout=60.0, parent_ready=never)
    assert expired.event_ids() == [orphan.id]
    assert (scheduler.lanes, scheduler.pending_events, scheduler.waiting_works) == (0, 0, 0)
    assert take_one(scheduler) is None


def test_a_child_whose_parent_is_ready_does_not_expire() -> None:
    scheduler = filled(contact())
    assert scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=always) == []


def test_a_child_does_not_expire_while_its_customer_create_waits_or_flies() -> None:
    scheduler = filled(contact(), customer(fields={"name": "A"}))
    assert scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=never) == []
    create = take_one(scheduler, never)
    assert create is not None
    assert scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=never) == []
    scheduler.done(create)  # say it was dead-lettered: the parent will never come
    assert len(scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=never)) == 1


def test_an_expired_orphan_unblocks_the_customer_delete_behind_it() -> None:
    scheduler = filled(contact(), customer(DELETE))
    assert take_one(scheduler, never) is None
    scheduler.expire_orphans(now=1e9, timeout=1.0, parent_ready=never)
    work = take_one(scheduler, never)
    assert work is not None
    assert work.action is DELETE


def test_a_child_in_front_of_a_customer_delete_expires_though_a_re_create_waits_behind_it() -> None:
    # The re-create cannot overtake the delete, nor the delete the child: without expiry the
    # lane would be stuck for good.
    scheduler = filled(contact(), customer(DELETE), customer(fields={"name": "again"}))
    assert take_one(scheduler, never) is None
    [orphan] = scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=never)
    assert orphan.entity.kind is CONTACT
    assert [w.action for w in drain(scheduler, never)] == [DELETE, UPSERT]


def test_a_child_behind_a_customer_delete_waits_for_the_re_create_behind_it() -> None:
    scheduler = filled(customer(DELETE), contact(), customer(fields={"name": "again"}))
    assert scheduler.expire_orphans(now=1e9, timeout=60.0, parent_ready=never) == []


# -- revoked partitions -------------------------------------------------------------------------


def on_partition(event: Event, partition: int) -> Event:
    record = RecordRef(
        topic="crm", partition=partition, offset=event.record.offset, key=None, value=None
    )
    return Event(**{**{f: getattr(event, f) for f in Event.__dataclass_fields__}, "record": record})


def test_dropping_a_revoked_partition_returns_its_waiting_works_and_keeps_the_rest() -> None:
    revoked = [on_partition(customer(sequence=3), 1), on_partition(customer(sequence=4), 1)]
    kept = on_partition(customer(external_id="cus_2"), 2)
    scheduler = filled(*revoked, kept)
    [dropped] = scheduler.drop_partitions([("crm", 1)])
    assert dropped.event_ids() == [e.id for e in revoked]
    assert (scheduler.lanes, scheduler.pending_events, scheduler.waiting_works) == (1, 1, 1)
    assert scheduler.compact_events == 0
    assert [w.event_ids() for w in drain(scheduler)] == [[kept.id]]


def test_a_dropped_event_read_again_is_not_stale() -> None:
    event = on_partition(customer(sequence=3), 1)
    scheduler = filled(event)
    scheduler.drop_partitions([("crm", 1)])
    assert scheduler.add(event, now=0.0)


def test_dropping_a_partition_leaves_the_work_in_flight_to_finish() -> None:
    scheduler = filled(on_partition(customer(), 1), on_partition(contact(), 1))
    flying = take_one(scheduler)
    assert flying is not None
    assert len(scheduler.drop_partitions([("crm", 1)])) == 1
    assert scheduler.busy_lanes == 1
    scheduler.done(flying)
    assert scheduler.lanes == 0


# -- bookkeeping --------------------------------------------------------------------------------


def test_counts_follow_events_from_add_to_done() -> None:
    scheduler = filled(customer(), customer(), customer(external_id="cus_2"))
    assert (scheduler.pending_events, scheduler.waiting_works, scheduler.lanes) == (3, 2, 2)
    works = scheduler.take_ready(always, limit=5)
    assert (scheduler.waiting_works, scheduler.busy_lanes) == (0, 2)
    for work in works:
        scheduler.done(work)
    assert (scheduler.pending_events, scheduler.lanes, scheduler.busy_lanes) == (0, 0, 0)


def test_only_the_carrier_of_a_work_is_held_whole_the_merged_and_superseded_compactly() -> None:
    scheduler = filled(customer(), customer(), customer(), contact(), contact(), contact(DELETE))
    # customer: 2 merged into the third; contact: 2 upserts superseded by the delete.
    assert (scheduler.pending_events, scheduler.compact_events) == (6, 4)
    for work in drain(scheduler):
        assert work.event_count - work.held_compactly == 1
    assert (scheduler.pending_events, scheduler.compact_events) == (0, 0)


def test_finishing_a_work_that_is_not_in_flight_is_an_error() -> None:
    scheduler = filled(customer())
    work = take_one(scheduler)
    assert work is not None
    scheduler.done(work)
    with pytest.raises(ValueError, match="not in flight"):
        scheduler.done(work)


# -- property: any schedule gives the state of applying every event in offset order -----------

CUSTOMERS = ("c0", "c1")
ENTITIES = [
    *(EntityKey(kind=CUSTOMER, external_id=c) for c in CUSTOMERS),
    *(EntityKey(kind=CONTACT, external_id=f"{c}-k{n}") for c in CUSTOMERS for n in range(2)),
    *(EntityKey(kind=ONBOARDING, external_id=f"{c}-o") for c in CUSTOMERS),
]
CHANGES = st.tuples(
    st.sampled_from(ENTITIES),
    st.sampled_from([UPSERT, UPSERT, DELETE]),
    st.dictionaries(st.sampled_from(["a", "b", "metadata"]), st.integers(0, 3), max_size=2),
    st.none() | st.integers(0, 12),
)
Change = tuple[EntityKey, Action, dict[str, Any], int | None]


def stream(changes: list[Change]) -> list[Event]:
    events = []
    for offset, (entity, action, fields, sequence) in enumerate(changes):
        lane = entity.external_id.partition("-")[0]
        events.append(
            make_event(
                entity.kind,
                entity.external_id,
                action,
                customer=lane,
                fields=fields,
                sequence=sequence,
                offset=offset,
            )
        )
    return events


def sequential(events: list[Event]) -> dict[EntityKey, dict[str, Any]]:
    """The model: every event applied alone, in offset order, stale ones skipped."""
    state: dict[EntityKey, dict[str, Any]] = {}
    last: dict[EntityKey, int] = {}
    for event in events:
        if event.sequence is not None:
            if event.entity in last and event.sequence <= last[event.entity]:
                continue
            last[event.entity] = event.sequence
        if event.action is UPSERT:
            state.setdefault(event.entity, {}).update(event.fields)
        else:
            state.pop(event.entity, None)
    return state


class Simulation:
    """A worker pool over the scheduler, applying works to a model of Pivotal."""

    def __init__(self, events: list[Event], *, gated: bool) -> None:
        self.scheduler = Scheduler()
        self.unread = list(reversed(events))
        self.gated = gated
        self.pivotal: dict[EntityKey, dict[str, Any]] = {}
        self.applied_sequence: dict[EntityKey, int] = {}
        self.in_flight: dict[str, PendingRequest] = {}
        self.finished: list[str] = []  # event ids, each exactly once
        self.applied_offsets: dict[EntityKey, list[int]] = {}
        self.now = 0.0

    def parent_ready(self, lane: str) -> bool:
        return not self.gated or EntityKey(kind=CUSTOMER, external_id=lane) in self.pivotal

    def consume(self) -> None:
        event = self.unread.pop()
        if not self.scheduler.add(event, self.now, self.applied_sequence.get(event.entity)):
            self.finished.append(event.id)  # stale

    def take(self, limit: int) -> list[PendingRequest]:
        works = self.scheduler.take_ready(self.parent_ready, limit)
        for work in works:
            assert work.lane not in self.in_flight, "two works in flight in one lane"
            if work.entity.kind is not CUSTOMER and work.action is UPSERT:
                assert self.parent_ready(work.lane), "a child upsert handed out without its parent"
            self.in_flight[work.lane] = work
        return works

    def complete(self, lane: str) -> None:
        work = self.in_flight.pop(lane)
        if work.action is UPSERT:
            self.pivotal.setdefault(work.entity, {}).update(work.fields)
        else:
            self.pivotal.pop(work.entity, None)
        if work.sequence is not None:
            self.applied_sequence[work.entity] = work.sequence
        held = [offset for _, (_, _, offset) in (*work.superseded, *work.merged)]
        offsets = [*held, work.carrier.record.offset]
        assert offsets == sorted(offsets)
        self.applied_offsets.setdefault(work.entity, []).extend(offsets)
        self.finished.extend(work.event_ids())
        self.scheduler.done(work)

    def fail(self, lane: str) -> None:
        self.scheduler.requeue(self.in_flight.pop(lane))

    def drain(self) -> None:
        while self.unread:
            self.consume()
        while True:
            for lane in list(self.in_flight):
                self.complete(lane)
            if self.take(limit=100):
                continue
            self.now += 1000.0
            expired = self.scheduler.expire_orphans(
                self.now, timeout=1.0, parent_ready=self.parent_ready
            )
            if not expired:
                break
            self.finished.extend(i for work in expired for i in work.event_ids())

    def check_invariants(self, events: list[Event]) -> None:
        assert sorted(self.finished) == sorted(e.id for e in events), "every event finished once"
        for offsets in self.applied_offsets.values():
            assert offsets == sorted(offsets), "one entity's events applied in offset order"
        s = self.scheduler
        assert (s.pending_events, s.waiting_works, s.lanes, s.busy_lanes) == (0, 0, 0, 0)
        assert s.compact_events == 0


def simulate(data: st.DataObject, events: list[Event], *, gated: bool) -> Simulation:
    sim = Simulation(events, gated=gated)
    for _ in range(data.draw(st.integers(0, 120), label="steps")):
        sim.now += 1.0
        step = data.draw(
            st.sampled_from(["consume", "consume", "take", "complete", "complete", "fail"])
        )
        if step == "consume" and sim.unread:
            sim.consume()
        elif step == "take":
            sim.take(data.draw(st.integers(1, 3), label="limit"))
        elif step in ("complete", "fail") and sim.in_flight:
            lane = data.draw(st.sampled_from(sorted(sim.in_flight)), label="lane")
            sim.complete(lane) if step == "complete" else sim.fail(lane)
    sim.drain()
    sim.check_invariants(events)
    return sim


@settings(max_examples=150, deadline=None)
@given(st.lists(CHANGES, max_size=30), st.data())
def test_any_schedule_reaches_the_state_of_applying_every_event_in_order(
    changes: list[Change], data: st.DataObject
) -> None:
    events = stream(changes)
    sim = simulate(data, events, gated=False)
    assert sim.pivotal == sequential(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(CHANGES, max_size=30), st.data())
def test_with_parent_gating_children_wait_for_a_customer_created_later(
    changes: list[Change], data: st.DataObject
) -> None:
    # No customer deletes, and every customer is created at some point (possibly after its
    # children): then gating only delays children, and the final state is the sequential one.
    kept = [c for c in changes if not (c[0].kind is CUSTOMER and c[1] is DELETE)]
    kept += [(EntityKey(kind=CUSTOMER, external_id=c), UPSERT, {}, None) for c in CUSTOMERS]
    events = stream(kept)
    sim = simulate(data, events, gated=True)
    assert sim.pivotal == sequential(events)


@settings(max_examples=150, deadline=None)
@given(st.lists(CHANGES, max_size=30), st.data())
def test_with_parent_gating_and_customer_deletes_every_event_finishes_once_in_order(
    changes: list[Change], data: st.DataObject
) -> None:
    simulate(data, stream(changes), gated=True)
