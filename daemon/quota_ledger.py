"""The API key's window shared by every replica, through the checkpoint database.

Pivotal's quota belongs to the key, not to the pod. Alone, a replica can only infer the others
from the `X-RateLimit-*` counts (daemon/ratelimit.py); these replicas share a Postgres, so they
keep one ledger of the key's sliding window there instead (`quota_reserve`, migration 0003):

1. **A slot is reserved before each send.** The row lock on the key makes count + insert one
   exact step; timestamps are the database's clock, so pod clock skew cannot matter (a replica
   sends durations measured on its monotonic clock, never a time of day).
2. **A slot frees one window after the request's latest possible arrival**: its answer. In
   flight, it is held.
3. **One round trip per call, one call for every worker waiting**: finished requests, learned
   state and the reservation travel together. Workers that queue while a call is out are served
   by the next one.
4. **A replica silent for a lease (`LEASE_SECONDS`) is dead**: its in-flight slots free one
   window later, and it loses its share.
5. **Fair shares among replicas with work**: while others wait, a replica takes at most
   ⌈L / replicas wanting⌉ slots of the window; one that runs dry has no share from its next call.
6. **Learned state is shared**: the limit, the window, a 429's Retry-After and a 401's pause stop
   or retune every replica on their next call.
7. **Degrade, never overspend**: a call that fails or takes longer than `CALL_TIMEOUT_SECONDS`
   switches this replica to the header-based limiter (which sees every answer all along and
   counts the other replicas as foreign); it retries every `RECOVERY_SECONDS`, and the requests
   it sent meanwhile are written into the ledger when it comes back.
8. **Requests outside the ledger** (a person's script on the same key): when the server counted
   more than the ledger can explain, the excess holds slots for one window.

`SharedPacer` is the dispatcher's `Pacer`; `PostgresLedger` is the database side. Every
time-shaped input (`clock`, `sleep`) is injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import structlog
from pydantic import SecretStr

from daemon.checkpoints import QUERIES
from daemon.metrics import Metrics
from daemon.ratelimit import Permit, RateLimiter, parse_quota_headers

log = structlog.get_logger("pivotal_sync.quota_ledger")

# A replica that has not called for this long is dead (rule 4); it calls at least 3× as often.
LEASE_SECONDS = 5.0
HEARTBEAT_SECONDS = LEASE_SECONDS / 3
# A replica that wanted a slot this recently still has a share (rule 5).
ACTIVE_SECONDS = 0.5
# Slower than this, the ledger is out: use the header-based limiter (rule 7).
CALL_TIMEOUT_SECONDS = 1.0
RECOVERY_SECONDS = 1.0
# While slots are denied, ask again at least this often (a dry replica's share frees).
MAX_POLL_SECONDS = 0.25
# Finished requests are reported within this long even when nobody waits.
REPORT_SECONDS = 0.5
# A 401 pause shared with the others lasts this long unless renewed (its replica may die).
AUTH_PAUSE_SECONDS = 3 * LEASE_SECONDS
# Local pauses (auth, server errors) are looked at again this often.
LOCAL_PAUSE_POLL_SECONDS = 0.05
# Outside requests are counted only above this many (in-flight reordering makes a little noise).
OUTSIDE_TOLERANCE = 1
HASH_CONTEXT = b"pivotal-sync quota ledger\0"
# The dispatcher's pause reason for a refused key (a 401), shared with the other replicas.
AUTH = "auth"


def key_hash(api_key: SecretStr) -> bytes:
    """The key's ledger identity: a SHA-256 of it, never the key."""
    return hashlib.sha256(HASH_CONTEXT + api_key.get_secret_value().encode()).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveCall:
    """One round trip's worth of news and wants (see `quota_reserve` in migration 0003)."""

    want: int  # slots wanted now
    in_flight: tuple[int, ...]  # this replica's granted slots not yet finished
    done: tuple[tuple[int, float, bool], ...] = ()  # (slot, seconds since latest arrival, counted)
    extra_ages: tuple[float, ...] = ()  # seconds since arrival of sends outside the ledger
    limit: int | None = None  # newly learned limit
    window_seconds: float | None = None  # newly learned or configured window
    window_fixed: bool = False  # configured: learning elsewhere does not move it
    blocked_seconds: float | None = None  # a Retry-After to share
    auth_pause_seconds: float | None = None  # > 0: paused for this long; 0: resumed
    outside: int | None = None  # requests counted by the server that no replica reserved


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveAnswer:
    granted: tuple[int, ...]  # slot ids, one per request that may go now
    wait_seconds: float | None  # ask again after this long; None: when a request finishes
    limit: int | None  # the key's limit as the ledger knows it
    window_seconds: float
    blocked_seconds: float  # > 0: a shared Retry-After is running
    auth_paused: bool  # a replica has the key refused (401)
    held: int  # slots held on the key after this call
    grants_total: int  # slots granted on the key ever (a counter)
    replicas: int  # replicas alive on the key


class Ledger(Protocol):
    """The database side, one replica's view of one key."""

    async def reserve(self, call: ReserveCall) -> ReserveAnswer: ...

    async def close(self) -> None:
        """Drop the connections at once, waiting for nothing (a call is abandoned)."""


class PostgresLedger:
    """`quota_reserve` over a small pool of its own, so checkpoint writes never queue behind it
    (nor it behind them). The pool is opened on first use and re-opened after an outage."""

    def __init__(
        self,
        dsn: str,
        key: bytes,
        *,
        replica: uuid.UUID | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._dsn = dsn
        self._key = key
        self.replica = replica or uuid.uuid4()
        self._lease = lease_seconds
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    async def reserve(self, call: ReserveCall) -> ReserveAnswer:
        pool = await self._open()
        try:
            row = await pool.fetchrow(QUERIES["quota_reserve"], *self._arguments(call))
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            await self.close()  # a fresh pool next time; the old connections are broken
            raise
        assert row is not None  # the function returns exactly one row
        wait = row["wait_seconds"]
        return ReserveAnswer(
            granted=tuple(row["granted"] or ()),
            wait_seconds=None if wait is None else float(wait),
            limit=row["limit_per_window"],
            window_seconds=float(row["window_seconds"]),
            blocked_seconds=float(row["blocked_seconds"] or 0.0),
            auth_paused=bool(row["auth_paused"]),
            held=int(row["held"]),
            grants_total=int(row["grants_total"]),
            replicas=int(row["replicas"]),
        )

    def _arguments(self, call: ReserveCall) -> tuple[object, ...]:
        return (
            self._key,
            self.replica,
            call.want,
            list(call.in_flight),
            [d[0] for d in call.done],
            [d[1] for d in call.done],
            [d[2] for d in call.done],
            list(call.extra_ages),
            call.limit,
            call.window_seconds,
            call.window_fixed,
            call.blocked_seconds,
            call.auth_pause_seconds,
            call.outside,
            self._lease,
            ACTIVE_SECONDS,
        )

    async def _open(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=2, timeout=CALL_TIMEOUT_SECONDS
            )
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()


class SharedPermit:
    """Leave to send one request: a ledger slot (or none, in fallback) and the local permit."""

    __slots__ = ("_grants_total", "_held", "_local", "_pacer", "slot")

    def __init__(
        self, pacer: SharedPacer, local: Permit, slot: int | None, held: int, grants_total: int
    ) -> None:
        self._pacer = pacer
        self._local = local
        self.slot = slot  # the ledger row; None when sent outside the ledger
        self._held = held  # slots held on the key when this one was granted
        self._grants_total = grants_total  # the key's grant counter then

    @property
    def sent_at(self) -> float:
        return self._local.sent_at

    def complete(self, status: int, headers: Mapping[str, str]) -> None:
        self._local.complete(status, headers)
        self._pacer._finished(self, status, headers)

    def failed(self, *, systemic: bool = True) -> None:
        self._local.failed(systemic=systemic)
        self._pacer._finished(self, None, {})


@dataclass(slots=True)
class _News:
    """What the next call reports: finished requests and learned state (rule 3)."""

    done: list[tuple[int, float, bool]] = field(default_factory=list)  # (slot, arrival, counted)
    extra: list[float] = field(default_factory=list)  # arrival times of sends outside the ledger
    blocked_until: float | None = None
    auth_pause: float | None = None
    outside: int | None = None
    since: float | None = None  # when the oldest unreported item arrived


class SharedPacer:
    """The dispatcher's pacer when replicas share the key through the ledger (module doc)."""

    def __init__(
        self,
        *,
        local: RateLimiter,
        ledger: Ledger,
        metrics: Metrics | None = None,
        window_hint_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        call_timeout_seconds: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self._local = local
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._timeout = call_timeout_seconds
        self._waiters: deque[asyncio.Future[int | None]] = deque()
        self._in_flight: set[int] = set()
        self._news = _News()
        self._checks: list[tuple[int, int, int]] = []  # (server count, held, grants) to explain
        snapshot = local.snapshot()
        self._window_hint = window_hint_seconds
        self._published_limit = snapshot.learned_limit
        # Unset, the window is learned: publish only what the local limiter learns.
        self._published_window = None if window_hint_seconds else snapshot.window_seconds
        self._auth_renewed_at = -math.inf
        self._held = 0
        self._grants_total = 0
        self._fallback = False
        self._retry_at = 0.0
        self._next_at = 0.0
        self._last_call = -math.inf
        self._awaiting_answers = False
        self._wake = asyncio.Event()
        if metrics is not None:
            metrics.ledger_in_use.set(1)

    # -- the dispatcher's Pacer ----------------------------------------------------------------

    async def acquire(self) -> SharedPermit:
        """Wait for a slot of the key's window (or, while the ledger is out, a local token)."""
        while True:
            await self._local_clear()
            if self._fallback:
                return SharedPermit(self, await self._local.acquire(), None, 0, 0)
            waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._wake.set()
            try:
                slot = await waiter
            except asyncio.CancelledError:
                # Granted in the same instant as cancelled: give the slot back unsent.
                granted = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if granted is not None:
                    self._release(granted)
                raise
            if slot is not None:
                return SharedPermit(self, self._local.probe(), slot, self._held, self._grants_total)

    def probe(self) -> SharedPermit:
        """The auth probe: past every pause, outside the ledger (it reports it afterwards)."""
        return SharedPermit(self, self._local.probe(), None, 0, 0)

    def pause(self, reason: str) -> None:
        self._local.pause(reason)
        if reason == AUTH:
            self._renew_auth_pause(self._clock())

    def resume(self, reason: str) -> None:
        self._local.resume(reason)
        if reason == AUTH:
            self._news.auth_pause = 0.0
            self._auth_renewed_at = -math.inf
            self._wake.set()

    @property
    def paused_reasons(self) -> frozenset[str]:
        return self._local.paused_reasons

    def seconds_to_send(self, requests: int) -> float:
        return self._local.seconds_to_send(requests)

    @property
    def in_fallback(self) -> bool:
        return self._fallback

    # -- the caller: one task per replica ------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Make the ledger calls until `stop` is set; then send the waiting workers local."""
        try:
            while not stop.is_set():
                delay = self._next_call_in(self._clock())
                if delay > 0:
                    await self._idle(delay, stop)
                    continue
                await self._call()
        finally:
            self._fallback = True
            self._release_waiters()

    def _next_call_in(self, now: float) -> float:
        if self._fallback:
            return self._retry_at - now
        due = self._last_call + HEARTBEAT_SECONDS
        if self._live_waiters():
            due = min(due, self._next_at)
        news = self._news
        if news.since is not None:
            due = min(
                due, now if news.done and self._awaiting_answers else news.since + REPORT_SECONDS
            )
        if news.blocked_until is not None or news.auth_pause is not None:
            due = now
        if AUTH in self._local.paused_reasons and now - self._auth_renewed_at > LEASE_SECONDS:
            self._renew_auth_pause(now)
            due = now
        return due - now

    async def _idle(self, delay: float, stop: asyncio.Event) -> None:
        self._wake.clear()
        waits: list[asyncio.Future[object]] = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._sleep(delay)),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _call(self) -> None:
        started = self._clock()
        call, news = self._build_call(started), self._news
        self._news = _News()
        # Not wait_for: cancelling a query makes asyncpg send a cancel request and wait for it,
        # and against a blackholed database that wait lasts as long as the outage (the same
        # trap as the health ping, CheckpointStore.ping). On time-out the connections are
        # dropped and the call abandoned.
        task = asyncio.ensure_future(self._ledger.reserve(call))
        done, _ = await asyncio.wait({task}, timeout=self._timeout)
        failure: BaseException | None = None
        if task not in done:
            await self._ledger.close()
            task.cancel()
            _ABANDONED.add(task)  # the event loop holds tasks only weakly
            task.add_done_callback(_settled)
            failure = TimeoutError(f"the quota ledger did not answer in {self._timeout:g} s")
        else:
            failure = task.exception()
        if failure is not None:  # whatever the database does, degrade (rule 7)
            self._requeue(news)
            self._enter_fallback(failure)
            return
        answer = task.result()
        now = self._clock()
        if self._metrics is not None:
            self._metrics.ledger_call_duration.observe(now - started)
            self._metrics.ledger_replicas.set(answer.replicas)
        self._apply(answer, now)

    def _build_call(self, now: float) -> ReserveCall:
        news = self._news
        snapshot = self._local.snapshot()
        limit = snapshot.learned_limit if snapshot.learned_limit != self._published_limit else None
        window = self._window_hint or snapshot.window_seconds
        fresh_window = window if window != self._published_window else None
        return ReserveCall(
            want=0 if self._fallback else self._live_waiters(),
            in_flight=tuple(self._in_flight),
            done=tuple((slot, max(0.0, now - at), counted) for slot, at, counted in news.done),
            extra_ages=tuple(max(0.0, now - at) for at in news.extra),
            limit=limit,
            window_seconds=fresh_window,
            window_fixed=self._window_hint is not None,
            blocked_seconds=(
                None if news.blocked_until is None else max(0.0, news.blocked_until - now)
            ),
            auth_pause_seconds=news.auth_pause,
            outside=news.outside,
        )

    def _apply(self, answer: ReserveAnswer, now: float) -> None:
        if self._fallback:
            self._fallback = False
            log.info("quota_ledger_recovered")
            if self._metrics is not None:
                self._metrics.ledger_in_use.set(1)
        self._last_call = now
        self._awaiting_answers = False
        self._published_limit = answer.limit if answer.limit else self._published_limit
        self._published_window = (
            answer.window_seconds if not self._window_hint else (self._window_hint)
        )
        self._explain_counts(answer.grants_total)
        self._held, self._grants_total = answer.held, answer.grants_total
        for slot in answer.granted:
            self._grant(slot)
        if not self._live_waiters():
            self._next_at = now
        elif answer.blocked_seconds > 0:
            self._next_at = now + answer.blocked_seconds
        elif answer.wait_seconds is None:
            # Only slots in flight: the next answer (reported at once) may free or teach more.
            self._awaiting_answers = True
            self._next_at = now + MAX_POLL_SECONDS
        else:
            self._next_at = now + min(answer.wait_seconds, MAX_POLL_SECONDS)

    def _grant(self, slot: int) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight.add(slot)
                waiter.set_result(slot)
                return
        self._release(slot)  # its worker went away while the call was out

    def _live_waiters(self) -> int:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return sum(1 for w in self._waiters if not w.done())

    # -- finished requests --------------------------------------------------------------------

    def _finished(
        self, permit: SharedPermit, status: int | None, headers: Mapping[str, str]
    ) -> None:
        # Rule 2: the answer is the latest the request can have arrived. (Less the fastest round
        # trip is not a bound: a request that queued on its way in arrived later than that.)
        arrived = self._clock()
        counted = status != 429
        news = self._news
        if permit.slot is not None:
            self._in_flight.discard(permit.slot)
            news.done.append((permit.slot, arrived, counted))
        elif counted:
            news.extra.append(arrived)
        news.since = arrived if news.since is None else news.since
        if self._awaiting_answers:
            self._wake.set()
        if status == 429:
            blocked = self._local.snapshot().blocked_until
            if blocked is not None:
                news.blocked_until = max(news.blocked_until or blocked, blocked)
            self._wake.set()
        if permit.slot is not None and status is not None and status != 429:
            self._check_count(permit, headers)

    def _check_count(self, permit: SharedPermit, headers: Mapping[str, str]) -> None:
        quota = parse_quota_headers(headers, wall_now=time.time())
        if quota.limit is None or quota.remaining is None or quota.remaining == 0:
            return  # Remaining 0 is clamped: the true count may be higher, say nothing
        self._checks.append((quota.limit - quota.remaining, permit._held, permit._grants_total))

    def _explain_counts(self, grants_total: int) -> None:
        """Rule 8: the server's count at a request's arrival is at most the slots held when it
        was granted plus those granted since; more than that was sent outside the ledger."""
        if not self._checks:
            return
        excess = max(
            counted - held - (grants_total - granted) for counted, held, granted in self._checks
        )
        self._checks.clear()
        if excess > OUTSIDE_TOLERANCE:
            log.info("quota_outside_requests_seen", requests=excess)
            self._news.outside = excess
            self._news.since = self._news.since or self._clock()

    def _release(self, slot: int) -> None:
        self._in_flight.discard(slot)
        self._news.done.append((slot, self._clock(), False))
        self._news.since = self._news.since or self._clock()

    def _renew_auth_pause(self, now: float) -> None:
        self._news.auth_pause = AUTH_PAUSE_SECONDS
        self._auth_renewed_at = now
        self._wake.set()

    # -- fallback (rule 7) ----------------------------------------------------------------------

    def _enter_fallback(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + RECOVERY_SECONDS
        if self._fallback:
            return
        self._fallback = True
        log.warning("quota_ledger_unavailable", error=type(exc).__name__)
        if self._metrics is not None:
            self._metrics.ledger_fallbacks.inc()
            self._metrics.ledger_in_use.set(0)
        self._release_waiters()

    def _release_waiters(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # acquire() goes to the local limiter

    def _requeue(self, news: _News) -> None:
        """A failed call's news goes out with the next one (re-applying it is harmless:
        updates are by slot id, and an extra send counted twice only holds a slot more)."""
        mine = self._news
        mine.done[:0] = news.done
        mine.extra[:0] = news.extra
        if news.blocked_until is not None:
            mine.blocked_until = max(mine.blocked_until or 0.0, news.blocked_until)
        mine.auth_pause = mine.auth_pause if mine.auth_pause is not None else news.auth_pause
        mine.outside = mine.outside or news.outside
        if news.since is not None:
            mine.since = min(mine.since or news.since, news.since)

    async def _local_clear(self) -> None:
        """Local stops (this replica's 401 pause, its 5xx backoff, a Retry-After it saw) hold
        its workers before they queue for a slot."""
        while True:
            snapshot = self._local.snapshot()
            if snapshot.paused_reasons:
                await self._sleep(LOCAL_PAUSE_POLL_SECONDS)
            elif snapshot.blocked_until is not None:
                await self._sleep(
                    max(LOCAL_PAUSE_POLL_SECONDS, snapshot.blocked_until - self._clock())
                )
            else:
                return


_ABANDONED: set[asyncio.Future[ReserveAnswer]] = set()


def _settled(task: asyncio.Future[ReserveAnswer]) -> None:
    """An abandoned call's end is of no interest; reading it keeps asyncio from warning."""
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()
