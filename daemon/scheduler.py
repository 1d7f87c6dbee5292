"""Per-customer lanes: order, coalescing and parent gating, before an event costs a request.

Pure and synchronous: no I/O, no clock (the caller passes `now`), no asyncio. The dispatcher
owns the workers; this module only decides *what* may be sent next.

    scheduler = Scheduler()
    scheduler.add(event, now, applied_sequence=...)  # False: stale, finish it as STALE
    works = scheduler.take_ready(parent_ready, limit)  # lanes of the returned works are busy
    scheduler.done(work)                              # outcome recorded: the lane is idle again
    scheduler.requeue(work)                           # retry later: back at the head of its lane
    scheduler.expire_orphans(now, timeout, parent_ready)  # children whose parent never came
    scheduler.drop_partitions(revoked)                # on revoke: forget what was not started

A **lane** is one customer external id: the customer and all its contacts and onboardings. At
most one `PendingRequest` per lane is in flight. A `PendingRequest` (a "work" in the rules
below) is one request-to-be for one entity; it holds every event that request finishes.

Rules, in the order they matter:

1. **Per-entity order.** The works of one entity run in the order their events arrived; a
   later work of an entity never runs while an earlier one waits or is in flight.
2. **Parent gating.** A contact or onboarding *upsert* is ready only when
   `parent_ready(lane)` is true (its customer has a Pivotal id). Child *deletes* are not gated:
   `DELETE /contacts/{id}` needs no parent, and a customer's children outlive its deletion.
   A blocked child does not block the lane: the first ready work is taken, so a customer
   create that arrives after its contacts goes first and unblocks them.
3. **A customer delete is a barrier.** It runs only at the head of its lane (never overtaking
   an earlier child, which may still need the customer to exist), and no later work overtakes
   it (a later child must see the customer deleted, like in offset order). Later child upserts
   are not merged into works in front of it either.
4. **Coalescing.** An upsert is merged into the entity's last waiting work when that is an
   upsert never handed out (no delete of the entity in between, rule 3 respected): later
   fields win by a shallow `dict.update`, so a later `metadata` object *replaces* an earlier
   one. A delete after a waiting delete of the same entity is merged the same way. An upsert
   after a waiting delete is a new work (a re-create).
5. **Supersession.** A delete arriving while an upsert of the same entity waits (never handed
   out) takes that upsert's place in the lane, and its events move to the delete's
   `superseded`: they cost no request, and they are still finished with the delete, so
   their offsets get committed. A customer delete supersedes only when no child work waits in
   the lane: any of those could need the customer created first.
6. **A work once handed out is frozen.** A requeued work goes back at the head of its lane
   exactly as it was: a timed-out POST may have succeeded, and its retry must carry the same
   body (hence the same Idempotency-Key). Nothing is merged into it, nothing supersedes it.
7. **Stale events** are refused by `add`: with a `sequence`, an event not newer than
   `applied_sequence` (the entity map's) or than an event of the same entity already held in
   the lane is stale. So every work's events have increasing sequences, and nothing in a work
   can turn stale before it runs (only this lane's own works raise the entity's sequence).
8. **Fairness.** Lanes with waiting work take turns (round robin): a lane whose work was
   taken goes to the back of the queue when it is done, so a hot customer cannot starve others.
9. **Orphans.** `expire_orphans` removes gated child works older than `timeout` whose parent is
   still not ready *and* that no customer upsert of the lane can still help: none is in flight,
   and none waits that could run before them (under a long backlog the customer's create may
   simply not have been sent yet; but a create queued behind a waiting customer delete cannot
   run before the children in front of that delete, and waiting for it would block the lane).

Memory: one `PendingRequest` per run of coalesced events, holding whole only its last event
(the carrier); the events merged into it or superseded are held as an id and a position
(daemon/merged_events.py, ~16 bytes beside the id), so a backlog of many updates per entity
fits in memory and coalesces. One small `_Lane` per customer with
work; lanes are removed as soon as they are idle and empty (with them, their held sequences:
from then on the entity map's `applied_sequence` is what detects staleness).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from daemon.events import Action, EntityKey, EntityKind, Event
from daemon.merged_events import MergedEvents

ParentReady = Callable[[str], bool]


@dataclass(kw_only=True, slots=True, eq=False)
class PendingRequest:
    """One request-to-be for one entity, and every event that request finishes."""

    # The customer external id whose lane this work is in.
    lane: str
    entity: EntityKey
    action: Action
    customer_external_id: str
    # Merged fields of the events (later wins, shallow). Empty for deletes.
    fields: dict[str, Any]
    # The last event: the one whose request this is (held whole; the earlier ones are merged).
    carrier: Event
    # The first event's id, for the create's Idempotency-Key: fixed for the life of the work.
    first_event_id: str
    # The highest `sequence` among all of its events (None when none has one): the entity's
    # sequence once this work is applied.
    sequence: int | None
    # When the first event of this work arrived, for the parent timeout.
    enqueued_at: float
    # Earlier events merged into this one (their fields are in `fields`): finish as COALESCED.
    merged: MergedEvents = field(default_factory=MergedEvents)
    # Earlier upserts of the entity made moot by this delete: finish them as SUPERSEDED.
    superseded: MergedEvents = field(default_factory=MergedEvents)
    # Position in the lane: creation order (a superseding delete takes its upsert's place).
    order: int = 0
    # Handed out at least once: frozen from then on (rule 6 of the module docstring).
    attempted: bool = False

    @property
    def held_compactly(self) -> int:
        """Events of this work held as an id and a position (daemon/merged_events.py)."""
        return len(self.merged) + len(self.superseded)

    @property
    def event_count(self) -> int:
        """How many events finish with this work."""
        return 1 + self.held_compactly

    def event_ids(self) -> list[str]:
        """Every event id this work finishes: superseded, merged, then the carrier."""
        return [*self.superseded.ids(), *self.merged.ids(), self.carrier.id]

    def partitions(self) -> set[tuple[str, int]]:
        """The (topic, partition)s its events came from."""
        record = self.carrier.record
        return (
            {(record.topic, record.partition)}
            | self.merged.partitions()
            | (self.superseded.partitions())
        )

    def absorb(self, event: Event) -> None:
        """Merge a later event of the same entity and action into this work."""
        self.fields.update(event.fields)
        self.merged.add(self.carrier.id, self.carrier.record)
        self.carrier = event
        if event.sequence is not None:
            self.sequence = (
                event.sequence if self.sequence is None else max(self.sequence, event.sequence)
            )


@dataclass(slots=True, eq=False)
class _Lane:
    """One customer's waiting works, and what the rules need to know about them cheaply."""

    name: str
    # Waiting works by `order`, in the order they run (a requeued work moves to the front).
    works: OrderedDict[int, PendingRequest] = field(default_factory=OrderedDict)
    # The last waiting work of each entity: where coalescing and supersession look.
    tails: dict[EntityKey, PendingRequest] = field(default_factory=dict)
    # Highest sequence held per entity, waiting or in flight: for stale detection.
    sequences: dict[EntityKey, int] = field(default_factory=dict)
    in_flight: PendingRequest | None = None
    # `order` of the last waiting customer delete (rule 3), None when none waits.
    barrier: int | None = None
    children: int = 0  # waiting contact and onboarding works
    gated: int = 0  # waiting contact and onboarding upserts (they need the parent)
    customer_upserts: int = 0  # waiting customer upserts (they can make the parent ready)
    queued: bool = False  # in the round-robin queue of the scheduler

    def count(self, work: PendingRequest, sign: int) -> None:
        if work.entity.kind is EntityKind.CUSTOMER:
            self.customer_upserts += sign if work.action is Action.UPSERT else 0
            return
        self.children += sign
        self.gated += sign if work.action is Action.UPSERT else 0


def _is_customer_delete(work: PendingRequest) -> bool:
    return work.entity.kind is EntityKind.CUSTOMER and work.action is Action.DELETE


def is_stale(sequence: int | None, applied: int | None) -> bool:
    """An event with `sequence` is stale when it is not newer than what was applied."""
    return sequence is not None and applied is not None and sequence <= applied


class Scheduler:
    """Lanes of waiting works; hands out ready works, at most one per lane at a time."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}
        # Idle lanes with waiting works, in turn order.
        self._turns: deque[str] = deque()
        self._next_order = 0
        self._pending_events = 0
        self._compact_events = 0
        self._waiting_works = 0
        self._busy_lanes = 0

    @property
    def pending_events(self) -> int:
        """Events held (waiting or in flight) and not yet done: for backpressure."""
        return self._pending_events

    @property
    def compact_events(self) -> int:
        """Of those, the events held merged into a work, as an id and a position only."""
        return self._compact_events

    @property
    def waiting_works(self) -> int:
        """Requests-to-be waiting in lanes (the lane queue depth)."""
        return self._waiting_works

    @property
    def lanes(self) -> int:
        """Customers with waiting or in-flight work."""
        return len(self._lanes)

    @property
    def busy_lanes(self) -> int:
        """Lanes with a work in flight."""
        return self._busy_lanes

    def add(self, event: Event, now: float, applied_sequence: int | None = None) -> bool:
        """Queue an event in its lane; False (nothing held) when it is stale (rule 7)."""
        lane = self._lanes.get(event.customer_external_id)
        held = lane.sequences.get(event.entity) if lane is not None else None
        if is_stale(event.sequence, held) or is_stale(event.sequence, applied_sequence):
            return False
        if lane is None:
            lane = self._lanes[event.customer_external_id] = _Lane(event.customer_external_id)
        if event.sequence is not None:
            lane.sequences[event.entity] = event.sequence
        self._pending_events += 1
        if event.action is Action.UPSERT:
            self._add_upsert(lane, event, now)
        else:
            self._add_delete(lane, event, now)
        self._give_turn(lane)
        return True

    def take_ready(self, parent_ready: ParentReady, limit: int) -> list[PendingRequest]:
        """Up to `limit` ready works from distinct idle lanes, in turn; their lanes become busy."""
        taken: list[PendingRequest] = []
        for _ in range(len(self._turns)):
            if len(taken) >= limit:
                break
            lane = self._lanes[self._turns.popleft()]
            work = self._first_ready(lane, parent_ready)
            if work is None:
                self._turns.append(lane.name)  # blocked: its turn comes again later
                continue
            lane.queued = False
            self._take(lane, work)
            taken.append(work)
        return taken

    def done(self, work: PendingRequest) -> None:
        """The work's outcome is recorded: its lane is idle again."""
        lane = self._release(work)
        self._forget(work)
        self._give_turn(lane)
        self._drop_if_empty(lane)

    def requeue(self, work: PendingRequest) -> None:
        """Put a taken work back, unchanged, at the head of its lane, to be retried later."""
        lane = self._release(work)
        lane.works[work.order] = work
        lane.works.move_to_end(work.order, last=False)
        lane.count(work, +1)
        self._waiting_works += 1
        lane.tails.setdefault(work.entity, work)  # a later work of the entity stays the tail
        if _is_customer_delete(work):
            lane.barrier = max(work.order, lane.barrier if lane.barrier is not None else -1)
        self._give_turn(lane)

    def expire_orphans(
        self, now: float, timeout: float, parent_ready: ParentReady
    ) -> list[PendingRequest]:
        """Remove and return child works whose parent missed its chance (rule 9)."""
        expired: list[PendingRequest] = []
        for lane in list(self._lanes.values()):
            flying = lane.in_flight
            if not lane.gated or parent_ready(lane.name):
                continue
            if (
                flying is not None
                and flying.entity.kind is EntityKind.CUSTOMER
                and flying.action is Action.UPSERT
            ):
                continue  # the customer is being created right now
            old = _orphans(lane, now - timeout)
            for work in old:
                self._remove_waiting(lane, work)
                self._forget(work)
            expired.extend(old)
            self._drop_if_empty(lane)
        self._prune_turns()
        return expired

    def drop_partitions(self, partitions: Collection[tuple[str, int]]) -> list[PendingRequest]:
        """On revoke: remove the waiting works of these (topic, partition)s and return them.

        The new owner of a partition reads their events again, so they must be neither sent nor
        finished here. Works in flight are left to finish. A work mixing events of a revoked and
        a kept partition (only when a producer files a child under another customer than its
        record key) is kept whole: sending it is safe, and Progress ignores the revoked offsets.
        """
        revoked = set(partitions)
        dropped: list[PendingRequest] = []
        for lane in list(self._lanes.values()):
            gone = [work for work in lane.works.values() if work.partitions() <= revoked]
            for work in gone:
                del lane.works[work.order]
                lane.count(work, -1)
                self._waiting_works -= 1
                self._forget(work)
            dropped += gone
            if gone:
                self._reindex(lane)
                self._drop_if_empty(lane)
        self._prune_turns()
        return dropped

    # -- adding -------------------------------------------------------------------------------

    def _add_upsert(self, lane: _Lane, event: Event, now: float) -> None:
        tail = lane.tails.get(event.entity)
        if (
            tail is not None
            and tail.action is Action.UPSERT
            and not tail.attempted
            and (lane.barrier is None or tail.order > lane.barrier)
        ):
            tail.absorb(event)
            self._compact_events += 1
            return
        self._append(lane, self._new_work(event, now))

    def _add_delete(self, lane: _Lane, event: Event, now: float) -> None:
        tail = lane.tails.get(event.entity)
        if tail is None or tail.attempted:
            self._append(lane, self._new_work(event, now))
        elif tail.action is Action.DELETE:
            tail.absorb(event)
            self._compact_events += 1
        elif event.entity.kind is EntityKind.CUSTOMER and lane.children:
            # Rule 5: a waiting child may need this customer's upsert to run first.
            self._append(lane, self._new_work(event, now))
        else:
            self._supersede(lane, tail, event)

    def _supersede(self, lane: _Lane, upsert: PendingRequest, event: Event) -> None:
        delete = self._new_work(event, upsert.enqueued_at)
        delete.order = upsert.order
        delete.superseded.extend(upsert.superseded)
        delete.superseded.extend(upsert.merged)
        delete.superseded.add(upsert.carrier.id, upsert.carrier.record)
        self._compact_events += 1
        # Sequences increase within a lane (rule 7): the delete's covers the upserts it moots.
        if delete.sequence is None:
            delete.sequence = upsert.sequence
        lane.works[delete.order] = delete  # same key: same place in the lane
        lane.count(upsert, -1)
        lane.count(delete, +1)
        lane.tails[delete.entity] = delete
        if _is_customer_delete(delete):
            lane.barrier = max(delete.order, lane.barrier if lane.barrier is not None else -1)

    def _new_work(self, event: Event, now: float) -> PendingRequest:
        return PendingRequest(
            lane=event.customer_external_id,
            entity=event.entity,
            action=event.action,
            customer_external_id=event.customer_external_id,
            fields=dict(event.fields) if event.action is Action.UPSERT else {},
            carrier=event,
            first_event_id=event.id,
            sequence=event.sequence,
            enqueued_at=now,
        )

    def _append(self, lane: _Lane, work: PendingRequest) -> None:
        work.order = self._next_order
        self._next_order += 1
        lane.works[work.order] = work
        lane.tails[work.entity] = work
        lane.count(work, +1)
        self._waiting_works += 1
        if _is_customer_delete(work):
            lane.barrier = work.order

    # -- taking -------------------------------------------------------------------------------

    def _first_ready(self, lane: _Lane, parent_ready: ParentReady) -> PendingRequest | None:
        """The first work of the lane that rules 1-3 allow to run now."""
        if lane.gated == len(lane.works) and not parent_ready(lane.name):
            return None  # only gated children wait, and their parent is not there
        parent: bool | None = None  # asked at most once, and only if needed
        blocked: set[EntityKey] = set()  # entities whose earliest waiting work is blocked
        for work in lane.works.values():
            if work.entity in blocked:
                continue
            if _is_customer_delete(work):
                return None if blocked else work  # rule 3: only from the head
            if work.entity.kind is EntityKind.CUSTOMER or work.action is Action.DELETE:
                return work
            if parent is None:
                parent = parent_ready(lane.name)
            if parent:
                return work
            blocked.add(work.entity)
        return None

    def _take(self, lane: _Lane, work: PendingRequest) -> None:
        self._remove_waiting(lane, work, earliest=True)
        work.attempted = True
        lane.in_flight = work
        self._busy_lanes += 1

    def _remove_waiting(self, lane: _Lane, work: PendingRequest, *, earliest: bool = False) -> None:
        """Take `work` out of the waiting works (`earliest`: no earlier work of its entity)."""
        del lane.works[work.order]
        lane.count(work, -1)
        self._waiting_works -= 1
        if lane.barrier == work.order:
            lane.barrier = None  # the barrier runs only from the head: no other one waits before
        if lane.tails.get(work.entity) is work and earliest:
            del lane.tails[work.entity]
        elif lane.tails.get(work.entity) is work:
            earlier = (w for w in reversed(lane.works.values()) if w.entity == work.entity)
            tail = next(earlier, None)
            if tail is None:
                del lane.tails[work.entity]
            else:
                lane.tails[work.entity] = tail

    # -- lanes --------------------------------------------------------------------------------

    def _forget(self, work: PendingRequest) -> None:
        """`work` left the scheduler (done, expired or dropped): its events are not held."""
        self._pending_events -= work.event_count
        self._compact_events -= work.held_compactly

    def _release(self, work: PendingRequest) -> _Lane:
        lane = self._lanes.get(work.lane)
        if lane is None or lane.in_flight is not work:
            raise ValueError(f"work for {work.entity} is not in flight")
        lane.in_flight = None
        self._busy_lanes -= 1
        return lane

    def _give_turn(self, lane: _Lane) -> None:
        if lane.works and lane.in_flight is None and not lane.queued:
            lane.queued = True
            self._turns.append(lane.name)

    def _drop_if_empty(self, lane: _Lane) -> None:
        if not lane.works and lane.in_flight is None:
            del self._lanes[lane.name]

    def _prune_turns(self) -> None:
        """After bulk removals: one pass instead of a `deque.remove` per emptied lane."""
        turns: deque[str] = deque()
        for name in self._turns:
            lane = self._lanes.get(name)
            if lane is not None and lane.works:
                turns.append(name)
            elif lane is not None:
                lane.queued = False
        self._turns = turns

    def _reindex(self, lane: _Lane) -> None:
        """Recompute tails, barrier and held sequences after works were dropped."""
        lane.tails = {work.entity: work for work in lane.works.values()}
        deletes = [work.order for work in lane.works.values() if _is_customer_delete(work)]
        lane.barrier = max(deletes, default=None)
        lane.sequences = {}
        held = [*lane.works.values(), *([lane.in_flight] if lane.in_flight else [])]
        for work in held:  # a work's sequence is the highest of its events'
            if work.sequence is not None:
                latest = lane.sequences.get(work.entity, work.sequence)
                lane.sequences[work.entity] = max(latest, work.sequence)


def _orphans(lane: _Lane, deadline: float) -> list[PendingRequest]:
    """Gated child works that arrived by `deadline` and that no waiting customer upsert can save.

    The first waiting customer upsert will run (rule 2), unless a customer delete waits in front
    of it: then it cannot help the children in front of that delete (rule 3), and without that
    timeout they would block the lane for good.
    """
    orphans: list[PendingRequest] = []
    behind_delete = False
    for work in lane.works.values():
        if work.entity.kind is EntityKind.CUSTOMER:
            if work.action is Action.UPSERT and not behind_delete:
                return []  # the create will run before these children need it
            behind_delete = True
            continue
        saved = behind_delete and lane.customer_upserts > 0  # by a re-create after the delete
        if work.action is Action.UPSERT and work.enqueued_at <= deadline and not saved:
            orphans.append(work)
    return orphans
