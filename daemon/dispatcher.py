"""Workers: take ready work, take a token, call Pivotal, and decide what became of it.

One work = one entity's coalesced changes = (normally) one request. For each work the dispatcher
picks the request (POST when the entity has no Pivotal id, PATCH when it has, DELETE), sends it
through the rate limiter, and classifies the answer:

- done: the outcome goes to the recorder (checkpoint + entity map, batched);
- retry: 429 waits out Retry-After (the limiter blocks every worker), 5xx / timeouts /
  connection errors back off exponentially with jitter — forever, because a systemic failure
  must never dead-letter anything; the lane simply waits;
- pause: 401 pauses the limiter and starts a cheap periodic probe (GET /me) that resumes it;
- dead letter: a permanent 4xx parks the events of the work with status and response body.

What each answer means is decided once, in `ApiResponse.raise_for_status` (pivotal.py); this
room matches the error classes of errors.py. Anything else raised while handling a work is a
bug in the daemon, not a flaky network: it is logged with its traceback and counted
(`pivotal_sync_internal_errors_total`), and the work is tried again with backoff. A record is
blamed only on evidence: once its work has failed `INTERNAL_ERROR_ATTEMPTS` times *and* other
works succeeded meanwhile, it is dead-lettered as `internal_error`, so one poison record costs
one dead letter and never the stream. When internal errors hit several different entities in a
row with no success between them (`INTERNAL_ERROR_SYSTEMIC_ENTITIES`), the bug is the daemon's,
not a record's: it pauses (reason `internal_errors` on /readyz and the metric) and keeps
retrying with backoff instead of dead-lettering the whole stream; the first success ends the
pause — the same judgement as for systemic API failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from daemon.backoff import Backoff, Stopped, retry
from daemon.create_intents import IntentStore, IntentWriter
from daemon.entities import EntityCache, Intent
from daemon.errors import (
    AuthError,
    InFlightConflictError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from daemon.events import Action, EntityKey, EntityKind, Event, RecordRef
from daemon.merged_events import Position, position_only
from daemon.metrics import Metrics, status_class
from daemon.outcomes import DeadLetter, EntityState, Finished, Outcome
from daemon.pivotal import ApiResponse
from daemon.recorder import Recorder
from daemon.scheduler import PendingRequest, Scheduler

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 30.0
# An unexpected exception on one work: tries before its events are dead-lettered.
INTERNAL_ERROR_ATTEMPTS = 3
# Distinct entities failing in a row (no success between) that make it the daemon's bug.
INTERNAL_ERROR_SYSTEMIC_ENTITIES = 3
INTERNAL_ERRORS = "internal_errors"
INTERNAL_ERROR_DETAIL_CHARS = 300
# How often blocked children are checked against the parent timeout.
ORPHAN_CHECK_INTERVAL_SECONDS = 1.0
SLUG_TAKEN = "slug_taken"

log = structlog.get_logger("pivotal_sync.dispatcher")


class Permit(Protocol):
    def complete(self, status: int, headers: Mapping[str, str]) -> None: ...

    def failed(self, *, systemic: bool = True) -> None: ...


class Pacer(Protocol):
    """The rate limiter as the dispatcher sees it."""

    async def acquire(self) -> Permit: ...

    def probe(self) -> Permit: ...

    def pause(self, reason: str) -> None: ...

    def resume(self, reason: str) -> None: ...

    @property
    def paused_reasons(self) -> frozenset[str]: ...


class HeldRecords(Protocol):
    """Where the bytes of merged events are read back for their dead letters (record_reader.py)."""

    async def read(self, positions: Collection[Position]) -> dict[Position, RecordRef]: ...


class Api(Protocol):
    """The Pivotal client as the dispatcher sees it (the real one, or the dry-run planner)."""

    async def create_customer(
        self, body: Mapping[str, Any], idempotency_key: str
    ) -> ApiResponse: ...
    async def update_customer(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse: ...
    async def delete_customer(self, pivotal_id: str) -> ApiResponse: ...
    async def find_customers_by_slug(self, slug: str) -> ApiResponse: ...
    async def create_contact(
        self, customer_id: str, body: Mapping[str, Any], idempotency_key: str
    ) -> ApiResponse: ...
    async def update_contact(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse: ...
    async def delete_contact(self, pivotal_id: str) -> ApiResponse: ...
    async def create_onboarding(
        self, body: Mapping[str, Any], idempotency_key: str
    ) -> ApiResponse: ...
    async def update_onboarding(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse: ...
    async def delete_onboarding(self, pivotal_id: str) -> ApiResponse: ...
    async def me(self) -> ApiResponse: ...


class Abandoned(Exception):
    """The daemon is stopping: leave this work unfinished; it is redelivered after restart."""


class Rejected(Exception):
    """Pivotal refused the work for good (or it can only fail): dead-letter it."""

    def __init__(self, dead_letter: DeadLetter, state: EntityState | None = None) -> None:
        super().__init__(dead_letter.reason)
        self.dead_letter = dead_letter
        self.state = state


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    state: EntityState | None


def idempotency_key(entity: EntityKey, first_event_id: str) -> str:
    """Stable for one create attempt of one entity: the intent stores it with its body."""
    digest = hashlib.sha256(f"{entity.kind}\0{entity.external_id}\0{first_event_id}".encode())
    return f"pivotal-sync:{entity.kind}:{digest.hexdigest()[:40]}"


class Dispatcher:
    def __init__(
        self,
        *,
        api: Api,
        pacer: Pacer,
        scheduler: Scheduler,
        entities: EntityCache,
        recorder: Recorder,
        held_records: HeldRecords | None,
        intents: IntentStore | None,
        metrics: Metrics,
        workers: int,
        record_source: str,
        adopt_slug_conflicts: bool,
        parent_timeout_seconds: float,
        auth_probe_interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
    ) -> None:
        self._api = api
        self._pacer = pacer
        self._scheduler = scheduler
        self._entities = entities
        self._recorder = recorder
        self._held_records = held_records
        self._metrics = metrics
        self._workers = workers
        self._source = record_source
        self._adopt = adopt_slug_conflicts
        self._parent_timeout = parent_timeout_seconds
        self._probe_interval = auth_probe_interval_seconds
        self._clock = clock
        self._backoff = backoff or Backoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)
        # Entities whose work failed with an internal error since the last success.
        self._failing: set[EntityKey] = set()
        # Works applied: the evidence that the daemon itself works (see the module doc).
        self._successes = 0
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = False
        # Set with _stopping; lets a wait for Postgres end at shutdown.
        self._stop = asyncio.Event()
        self._intents = IntentWriter(intents, self._stop) if intents is not None else None
        self._running: dict[int, PendingRequest] = {}
        self._probe: asyncio.Task[None] | None = None

    # -- intake side -----------------------------------------------------------------------
    def submit(self, event: Event) -> bool:
        """Queue `event` in its lane; False if it is stale (nothing queued)."""
        return not self.submit_all([event])

    def submit_all(self, events: Sequence[Event]) -> list[Event]:
        """Queue each event in its lane, in order; return the stale ones (nothing queued for
        them). The gauges are set once for the batch: per event they cost a third as much as
        the queueing itself (a catch-up profile)."""
        stale: list[Event] = []
        now = self._clock()
        for event in events:
            state = self._entities.get(event.entity)
            applied = state.last_sequence if state is not None else None
            if not self._scheduler.add(event, now, applied):
                stale.append(event)
        if len(stale) < len(events):
            self._update_gauges()
            self._changed.set()
        return stale

    @property
    def auth_paused(self) -> bool:
        return "auth" in self._pacer.paused_reasons

    @property
    def internal_errors_paused(self) -> bool:
        """Internal errors on many entities in a row: a bug of the daemon, not of a record."""
        return len(self._failing) >= INTERNAL_ERROR_SYSTEMIC_ENTITIES

    def in_flight_partitions(self) -> set[tuple[str, int]]:
        return {tp for work in self._running.values() for tp in work.partitions()}

    async def wait_until_idle(self, partitions: set[tuple[str, int]], limit_seconds: float) -> bool:
        """Wait until no running work holds events of `partitions` (rebalance, shutdown)."""
        deadline = self._clock() + limit_seconds
        while self.in_flight_partitions() & partitions:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(remaining, 0.5))
        return True

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, drain_timeout_seconds: float) -> None:
        """Run the workers until `stop`; then let running work finish for at most the drain
        timeout and abandon the rest (it is redelivered after restart, never lost)."""
        workers = [
            asyncio.create_task(self._worker(), name=f"worker-{i}") for i in range(self._workers)
        ]
        orphans = asyncio.create_task(self._expire_orphans_forever(), name="orphans")
        await stop.wait()
        self._stopping = True
        self._stop.set()
        self._changed.set()
        done, pending = await asyncio.wait(workers, timeout=drain_timeout_seconds)
        for task in [*pending, orphans, *([self._probe] if self._probe else [])]:
            task.cancel()
        await asyncio.gather(*pending, orphans, return_exceptions=True)
        if pending:
            log.warning("drain_timed_out", abandoned_works=len(pending))
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _worker(self) -> None:
        while True:
            work = await self._next_work()
            if work is None:
                return
            try:
                with self._running_work(work):
                    await self._process(work)
            except Abandoned:
                log.info("work_abandoned", entity=str(work.entity), events=work.event_count)
                return
            finally:
                self._scheduler.done(work)
                self._update_gauges()
                self._changed.set()

    @contextlib.contextmanager
    def _running_work(self, work: PendingRequest) -> Iterator[None]:
        """`work` counts as running (a rebalance waits for it) until its outcome is recorded."""
        self._running[id(work)] = work
        try:
            yield
        finally:
            self._running.pop(id(work), None)
            self._idle.set()

    async def _next_work(self) -> PendingRequest | None:
        while not self._stopping:
            # Clear before looking: a submit() between the look and the wait still wakes us.
            self._changed.clear()
            ready = self._scheduler.take_ready(self._entities.customer_ready, 1)
            if ready:
                return ready[0]
            await self._changed.wait()
        return None

    async def _expire_orphans_forever(self) -> None:
        while True:
            await asyncio.sleep(ORPHAN_CHECK_INTERVAL_SECONDS)
            expired = self._scheduler.expire_orphans(
                self._clock(), self._parent_timeout, self._entities.customer_ready
            )
            for work in expired:
                detail = (
                    f"customer {work.customer_external_id!r} has no Pivotal id after "
                    f"{self._parent_timeout:g} s"
                )
                # Running while its records are read back: a rebalance waits for it.
                try:
                    with self._running_work(work):
                        await self._finish_rejected(
                            work, Rejected(DeadLetter(reason="parent_missing", detail=detail))
                        )
                except Abandoned:
                    return  # stopping: unfinished, so redelivered after the restart
            if expired:
                self._update_gauges()

    # -- one work --------------------------------------------------------------------------
    async def _process(self, work: PendingRequest) -> None:
        attempt, successes_before = 0, self._successes
        while True:
            try:
                applied = await self._apply(work)
            except Rejected as rejected:
                await self._finish_rejected(work, rejected)
                return
            except Abandoned:
                raise
            except Exception as exc:  # a bug, not the network (see the module doc)
                attempt += 1
                others_work = self._successes > successes_before
                if await self._after_internal_error(work, exc, attempt, others_work):
                    continue
                await self._finish_rejected(work, Rejected(_internal_error_letter(exc, attempt)))
                return
            self._internal_errors_over()
            self._finish_applied(work, applied)
            return

    async def _after_internal_error(
        self, work: PendingRequest, exc: Exception, attempt: int, others_work: bool
    ) -> bool:
        """Count and log one internal error; wait and return True to try the work again,
        False to dead-letter it (its attempts are spent and other works succeed meanwhile)."""
        self._metrics.internal_errors.inc()
        self._failing.add(work.entity)
        systemic = self.internal_errors_paused
        log.error(
            "internal_error",
            entity=str(work.entity),
            event_ids=work.event_ids()[-10:],
            attempt=attempt,
            systemic=systemic,
            exc_info=exc,
        )
        if systemic:
            self._metrics.paused.labels(reason=INTERNAL_ERRORS).set(1)
        elif attempt >= INTERNAL_ERROR_ATTEMPTS and others_work:
            return False
        await self._backoff_wait(attempt, "internal_error", type(exc).__name__)
        return True

    def _internal_errors_over(self) -> None:
        self._successes += 1
        if self._failing:
            if self.internal_errors_paused:
                log.info("internal_errors_pause_ended")
            self._failing.clear()
            self._metrics.paused.labels(reason=INTERNAL_ERRORS).set(0)

    async def _apply(self, work: PendingRequest) -> Applied:
        state = self._entities.get(work.entity)
        if work.action is Action.DELETE:
            return await self._delete(work, state)
        if state is not None and state.pivotal_id is not None and not state.deleted:
            return await self._update(work, state)
        return await self._create(work)

    async def _delete(self, work: PendingRequest, state: EntityState | None) -> Applied:
        pivotal_id = state.pivotal_id if state is not None and not state.deleted else None
        if pivotal_id is None:
            pivotal_id = await self._made_by_a_lost_create(work)
        self._entities.clear_intent(work.entity)
        if pivotal_id is None:
            # Pivotal never had it (or it is gone already): nothing to send.
            return Applied(Outcome.NOOP, self._next_state(work, state, None, deleted=True))
        call = {
            EntityKind.CUSTOMER: self._api.delete_customer,
            EntityKind.CONTACT: self._api.delete_contact,
            EntityKind.ONBOARDING: self._api.delete_onboarding,
        }[work.entity.kind]
        try:
            await self._send(lambda: call(pivotal_id))
        except PermanentError as refused:
            # 404: deleted in Pivotal already (by hand, or by our own earlier attempt): the
            # goal holds.
            if refused.status != 404:
                raise _rejection(refused, state) from None
        return Applied(Outcome.SENT, self._next_state(work, state, pivotal_id, deleted=True))

    async def _made_by_a_lost_create(self, work: PendingRequest) -> str | None:
        """The id of what a create left unrecorded may have made: its intent is durable, its
        outcome is not (a run died after the POST). Replaying the POST with the same
        Idempotency-Key returns it, or makes it now, to be deleted at once: either way the
        delete then holds. None when there is no such intent, or Pivotal refuses it."""
        intent = self._entities.intent(work.entity)
        if intent is None:
            return None
        try:
            return self._id_of(await self._post(intent))
        except PermanentError:
            return None  # refused, so nothing was made under that key

    async def _update(self, work: PendingRequest, state: EntityState) -> Applied:
        assert state.pivotal_id is not None
        body = self._body(work, creating=False)
        try:
            await self._patch(work.entity.kind, state.pivotal_id, body)
        except PermanentError as refused:
            if refused.status != 404:
                raise _rejection(refused, state) from None
            # Deleted in Pivotal behind our back. Re-creating it silently could resurrect a
            # record a person removed on purpose, so park it: forget the stale id, and a
            # redrive of the dead letter re-creates it if that is what the operator wants.
            gone = self._next_state(work, state, None, deleted=True)
            self._entities.put(gone)
            raise Rejected(
                DeadLetter(
                    reason="deleted_in_pivotal",
                    detail=f"{work.entity} ({state.pivotal_id}) no longer exists in Pivotal",
                    status=404,
                    response_body=refused.body,
                ),
                gone,
            ) from None
        return Applied(Outcome.SENT, self._next_state(work, state, state.pivotal_id))

    async def _create(self, work: PendingRequest) -> Applied:
        intent = self._entities.intent(work.entity)
        fresh = intent is None
        if intent is None:
            intent = await self._new_intent(work)
        adopted = False
        try:
            pivotal_id = self._id_of(await self._post(intent))
        except PermanentError as refused:
            if not (
                refused.status == 409
                and refused.code == SLUG_TAKEN
                and work.entity.kind is EntityKind.CUSTOMER
                and self._adopt
            ):
                self._entities.clear_intent(work.entity)
                raise _rejection(refused, None) from None
            pivotal_id = await self._adopt_by_slug(work, intent)
            adopted = True
        state = self._next_state(work, None, pivotal_id)
        self._entities.put(state)
        self._entities.clear_intent(work.entity)
        # An adopted customer still needs our fields (and our metadata). An intent replayed
        # from an earlier run was answered from Pivotal's idempotency cache, and Pivotal may
        # hold newer values than its body (that run may have PATCHed later events before it
        # died): this work's whole body is sent, not what differs from the intent's.
        patch = self._body(work, creating=True)
        if adopted or patch.get("slug") == intent.body.get("slug"):
            patch.pop("slug", None)
        if patch and (adopted or not fresh):
            try:
                await self._patch(work.entity.kind, pivotal_id, patch)
            except PermanentError as refused:
                raise _rejection(refused, state) from None
        return Applied(Outcome.SENT, state)

    async def _new_intent(self, work: PendingRequest) -> Intent:
        body = self._body(work, creating=True)
        parent_id: str | None = None
        if work.entity.kind is EntityKind.CUSTOMER:
            if not isinstance(body.get("name"), str) or not body["name"]:
                # Pivotal requires a name on create: this request can only fail.
                raise Rejected(
                    DeadLetter(
                        reason="missing_field",
                        detail=f"{work.entity} is unknown to Pivotal and has no name to create it",
                    )
                )
        else:
            parent_id = self._entities.pivotal_id(
                EntityKey(kind=EntityKind.CUSTOMER, external_id=work.customer_external_id)
            )
            if parent_id is None:
                raise Rejected(
                    DeadLetter(reason="parent_missing", detail="customer deleted or missing")
                )
            if work.entity.kind is EntityKind.ONBOARDING:
                body["customer_id"] = parent_id
        intent = Intent(
            key=work.entity,
            idempotency_key=idempotency_key(work.entity, work.first_event_id),
            parent_id=parent_id,
            body=body,
        )
        # Durable before the POST leaves: see entities.py for why.
        if self._intents is not None:
            try:
                await self._intents.save(intent)
            except Stopped:
                raise Abandoned from None
        self._entities.set_intent(intent)
        return intent

    async def _adopt_by_slug(self, work: PendingRequest, intent: Intent) -> str:
        slug = str(intent.body.get("slug", ""))
        try:
            data = (await self._send(lambda: self._api.find_customers_by_slug(slug))).json()
        except PermanentError:
            data = None
        rows = data.get("data") if isinstance(data, dict) else None
        if not rows or not isinstance(rows[0], dict) or "id" not in rows[0]:
            self._entities.clear_intent(work.entity)
            raise Rejected(
                DeadLetter(
                    reason="slug_taken",
                    detail=f"slug {slug!r} is taken but no customer with it could be found",
                    status=409,
                )
            )
        log.info("customer_adopted", entity=str(work.entity), pivotal_id=rows[0]["id"])
        return str(rows[0]["id"])

    async def _post(self, intent: Intent) -> ApiResponse:
        kind = intent.key.kind
        if kind is EntityKind.CUSTOMER:
            return await self._send(
                lambda: self._api.create_customer(intent.body, intent.idempotency_key)
            )
        if kind is EntityKind.CONTACT:
            assert intent.parent_id is not None
            parent = intent.parent_id
            return await self._send(
                lambda: self._api.create_contact(parent, intent.body, intent.idempotency_key)
            )
        return await self._send(
            lambda: self._api.create_onboarding(intent.body, intent.idempotency_key)
        )

    async def _patch(self, kind: EntityKind, pivotal_id: str, body: dict[str, Any]) -> ApiResponse:
        call = {
            EntityKind.CUSTOMER: self._api.update_customer,
            EntityKind.CONTACT: self._api.update_contact,
            EntityKind.ONBOARDING: self._api.update_onboarding,
        }[kind]
        return await self._send(lambda: call(pivotal_id, body))

    def _body(self, work: PendingRequest, *, creating: bool) -> dict[str, Any]:
        body = dict(work.fields)
        if creating or "metadata" in body:
            # Every record we create is traceable to its CRM entity; a PATCH of metadata
            # replaces the object, so the trace is re-sent with it.
            metadata = body.get("metadata")
            merged = dict(metadata) if isinstance(metadata, Mapping) else {}
            merged["external_id"] = work.entity.external_id
            merged["source"] = self._source
            body["metadata"] = merged
        return body

    @staticmethod
    def _id_of(response: ApiResponse) -> str:
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise Rejected(
                DeadLetter(
                    reason="bad_response",
                    detail="create succeeded without an id in the body",
                    status=response.status,
                    response_body=response.body_excerpt(),
                )
            )
        return str(data["id"])

    def _next_state(
        self,
        work: PendingRequest,
        state: EntityState | None,
        pivotal_id: str | None,
        *,
        deleted: bool = False,
    ) -> EntityState:
        sequences = [
            s for s in (work.sequence, state.last_sequence if state else None) if s is not None
        ]
        return EntityState(
            key=work.entity,
            pivotal_id=pivotal_id,
            customer_external_id=work.customer_external_id,
            last_sequence=max(sequences) if sequences else None,
            deleted=deleted,
        )

    # -- sending ---------------------------------------------------------------------------
    async def _send(self, call: Callable[[], Awaitable[ApiResponse]]) -> ApiResponse:
        """One logical request: paced, retried through transient failures, never given up
        on for a systemic one. Returns the 2xx answer; raises `PermanentError` for a refusal
        no waiting can fix."""
        attempt = 0
        while True:
            if self._stopping and attempt:
                raise Abandoned
            permit = await self._pacer.acquire()
            started = self._clock()
            try:
                response = await call()
            except TransientError as exc:  # no answer: timeout, refused or dropped connection
                permit.failed()
                attempt += 1
                self._metrics.retries.labels(reason="network").inc()
                await self._backoff_wait(attempt, "network", str(exc))
                continue
            except BaseException:
                permit.failed(systemic=False)  # a bug or a cancellation, not the API
                raise
            permit.complete(response.status, response.headers)
            self._observe(response, self._clock() - started)
            try:
                response.raise_for_status()
            except RateLimitedError:
                # The limiter now blocks every worker until Retry-After has passed.
                self._metrics.retries.labels(reason="rate_limited").inc()
            except AuthError:
                self._auth_failed()
            except InFlightConflictError as exc:
                self._metrics.retries.labels(reason="conflict_in_flight").inc()
                await self._backoff_wait(attempt + 1, "conflict_in_flight", exc.code)
            except TransientError as exc:
                self._metrics.retries.labels(reason="server_error").inc()
                await self._backoff_wait(attempt + 1, f"http_{exc.status}", exc.code)
            else:
                return response
            attempt += 1

    async def _backoff_wait(self, attempt: int, reason: str, detail: str) -> None:
        delay = self._backoff.delay(attempt)
        log.info(
            "request_retrying",
            reason=reason,
            detail=detail[:200],
            attempt=attempt,
            delay_seconds=round(delay, 2),
        )
        if self._stopping:
            raise Abandoned
        await asyncio.sleep(delay)

    def _observe(self, response: ApiResponse, seconds: float) -> None:
        self._metrics.requests.labels(
            method=response.method,
            endpoint=response.endpoint,
            status_class=status_class(response.status),
        ).inc()
        self._metrics.request_duration.labels(
            method=response.method, endpoint=response.endpoint
        ).observe(seconds)

    def _auth_failed(self) -> None:
        if "auth" not in self._pacer.paused_reasons:
            log.error("api_key_refused", action="pausing; probing GET /me until it works again")
            self._pacer.pause("auth")
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_auth(), name="auth-probe")

    async def _probe_auth(self) -> None:
        """While paused for auth, one cheap GET /me per interval; resume on success."""
        while True:
            await asyncio.sleep(self._probe_interval)
            # The probe goes past the pause, but through the ledger: the server counts it.
            permit = self._pacer.probe()
            try:
                response = await self._api.me()
            except Exception as exc:
                permit.failed()
                log.info("auth_probe_failed", error=type(exc).__name__)
                continue
            permit.complete(response.status, response.headers)
            self._observe(response, 0.0)
            if response.status not in (401, 403):  # see ApiResponse.raise_for_status
                log.info("api_key_accepted", status=response.status)
                self._pacer.resume("auth")
                return

    # -- finishing -------------------------------------------------------------------------
    def _finish_applied(self, work: PendingRequest, applied: Applied) -> None:
        if applied.state is not None:
            # Before the lane is released: an idle lane forgets the sequences it held, and
            # from then on the entity map alone tells a late, older event that it is stale
            # and an upsert after a delete that the entity is gone (to be created again).
            self._entities.put(applied.state)
        pivotal_id = applied.state.pivotal_id if applied.state else None

        def finished(event_id: str, record: RecordRef, outcome: Outcome) -> Finished:
            return Finished(
                event_id=event_id,
                record=record,
                outcome=outcome,
                entity=work.entity,
                pivotal_id=pivotal_id,
            )

        done = [finished(i, position_only(p), Outcome.SUPERSEDED) for i, p in work.superseded]
        done += [finished(i, position_only(p), Outcome.COALESCED) for i, p in work.merged]
        done.append(finished(work.carrier.id, work.carrier.record, applied.outcome))
        if work.merged:
            self._metrics.coalesced.inc(len(work.merged))
        self._recorder.add(done, [applied.state] if applied.state else [])

    async def _finish_rejected(self, work: PendingRequest, rejected: Rejected) -> None:
        """Dead-letter every event of the work, each with its record as it arrived (the merged
        ones read back from Kafka first). Raises Abandoned when stopping meanwhile."""
        held = [*work.superseded, *work.merged]
        records = await self._read_back([position for _, position in held]) if held else {}
        letters = [(event_id, records[position]) for event_id, position in held]
        letters.append((work.carrier.id, work.carrier.record))
        finished = [
            Finished(
                event_id=event_id,
                record=record,
                outcome=Outcome.DEAD_LETTERED,
                entity=work.entity,
                dead_letter=rejected.dead_letter,
            )
            for event_id, record in letters
        ]
        self._recorder.add(finished, [rejected.state] if rejected.state else [])

    async def _read_back(self, positions: list[Position]) -> dict[Position, RecordRef]:
        def report(exc: BaseException, attempt: int, delay: float) -> None:
            log.warning(
                "held_records_unreadable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                records=len(positions),
                attempt=attempt,
                retry_in_seconds=round(delay, 2),
            )

        reader = self._held_records
        if reader is None:
            raise RuntimeError("events were merged, and nothing can read their records back")
        try:
            # Any failure is retried, not only Kafka's: the alternative is a worker gone and
            # a partition whose commits stop behind this work.
            return await retry(
                lambda: reader.read(positions),
                retry_on=(Exception,),
                backoff=self._backoff,
                stop=self._stop,
                on_retry=report,
            )
        except Stopped:
            raise Abandoned from None

    def _update_gauges(self) -> None:
        self._metrics.pending_events.set(self._scheduler.pending_events)
        self._metrics.lanes_active.set(self._scheduler.lanes)


def _rejection(refused: PermanentError, state: EntityState | None) -> Rejected:
    return Rejected(
        DeadLetter(
            reason=f"http_{refused.status}",
            detail=str(refused),
            status=refused.status,
            response_body=refused.body,
        ),
        state,
    )


def _internal_error_letter(exc: Exception, attempts: int) -> DeadLetter:
    # repr() of a RecursionError or a huge value can be enormous; the traceback is in the log.
    message = str(exc)[:INTERNAL_ERROR_DETAIL_CHARS]
    return DeadLetter(
        reason="internal_error",
        detail=f"{type(exc).__name__} after {attempts} attempts: {message}",
    )
