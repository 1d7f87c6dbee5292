"""The adaptive rate limiter: one quota ledger and one latency-sized concurrency limit per key.

Every request takes a `Permit` from `RateLimiter.acquire()`; every answer (or its absence) is
given back through the permit, and its headers retune the limiter. The model:

- **The window is a ledger, not a rate.** On a sliding window of `L` requests per `W` seconds a
  request sent at `t` holds one slot until `t + W`. The limiter keeps the times of its own sends,
  so it knows exactly when each of its own slots frees. An empty window is spent at once (the
  physical limit ⌈N/L − 1⌉·W needs the first `L` sent immediately), after that each freed slot
  is re-used the moment it frees: one window later the sends repeat the pattern of the window
  before, at the full limit and without a 429.
- **The server's count corrects the ledger.** A response to request `s` says `Remaining`: the
  server counted `L − Remaining` requests when `s` arrived. Those of our own sends that were in
  the window then are known; the rest are *foreign* — other replicas on the same key, or a
  previous process. Usage now = foreign + our sends inside the window + our sends the server has
  not counted yet (multiplied by the number of sharers: the others are assumed to be doing what
  we are doing). Tokens = `L − margin − usage`. A send is allowed while tokens ≥ 1; otherwise
  the wait is until enough of our own slots free, or, when foreign requests fill the window,
  until `Reset` (the oldest counted request leaves) for one probe that refreshes the count.
- **Sharing a key.** Alone (no foreign requests seen for a window) the margin is 0 and the
  ledger is exact. With sharers: a margin of 1 % of the limit, our un-counted sends counted once
  per estimated sharer, and jitter on every wait so replicas do not fire in lockstep. Each
  replica re-uses its own slots, so shares taken in the initial race persist; replicas that take
  from a common pool take only their share of it.
- **Arrival, not sending, holds a slot.** The server counts a request when it arrives, which
  is some time between our send and its answer. Each send's slot is held from its *latest
  possible arrival*: the send time plus how much slower its round trip was than the fastest
  seen (a request that waited for a new connection, or queued behind a burst, may have arrived
  late, and its slot frees late too); in flight, the arrival is unknown and the slot is held.
  A freed slot is re-used a few ms later still, plus an extra that doubles on every 429 the
  ledger did not predict and decays on success. The same bound counts which of our sends the
  server can have counted, so our own late arrivals are never mistaken for another replica's.
- **Learning.** `X-RateLimit-Limit` replaces the limit from the very next response (raised:
  tokens at once; lowered: sending stops until our own slots drop under the new limit). The
  window comes from a constructor hint, `RateLimit-Policy: …;w=`, or else is learned from
  `Reset`: alone, the oldest counted request is our own and `Reset − its send time` is `W`.
- **Retry-After beats everything.** A 429 blocks every acquire until it has passed (clamped to
  `max_retry_after_seconds`; unusable values fall back to `Reset` or a default and are logged).
- **No headers:** additive increase (2 % of the start rate per success) / multiplicative
  decrease (halve on a 429) of a plain token bucket, from the configured start rate.
- **Concurrency follows latency** (Little's law): the limit is 2 × (tokens available within one
  latency ÷ that latency, at least the window's sustained rate) × the latency EWMA, between 2 and
  `max_in_flight`; one in flight until the first response shows the headers.
- **Systemic failures:** `pause(reason)` (the dispatcher's "auth") blocks until `resume`; three
  consecutive 5xx or `failed()` start an exponential, jittered global backoff (pause reason
  "server_errors") that ends on its own or on the next good response.

Every time-shaped input is injected (`clock`, `wall_clock`, `sleep`, `rng`), so the tests and
`bench/ratelimit_sim.py` run on virtual time.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from daemon.backoff import Backoff, parse_retry_after
from daemon.metrics import Metrics

log = structlog.get_logger("pivotal_sync.ratelimit")

# Pivotal's window; used until a hint, a policy header or the Reset header says otherwise.
DEFAULT_WINDOW_SECONDS = 60.0
MAX_WINDOW_SECONDS = 3600.0
MAX_LIMIT = 1_000_000
# A 429 without a usable Retry-After or Reset waits this long.
DEFAULT_RETRY_AFTER_SECONDS = 5.0
# Epoch seconds: anything above this in a Reset header is a timestamp, below it a delta.
EPOCH_THRESHOLD_SECONDS = 1e9
# A Date header further than this from our wall clock means our clock is off: trust the server.
CLOCK_SKEW_TOLERANCE_SECONDS = 2.0
# Re-use a freed slot this much later than the ledger says (clock rates, timer resolution).
SLOT_SLACK_SECONDS = 0.005
# With no token, a slot that frees "now" (to the float) is looked at again this much later.
LEDGER_RECHECK_SECONDS = 1e-6
MAX_EXTRA_SLACK_SECONDS = 2.0
EXTRA_SLACK_DECAY = 0.99
# With sharers: keep this fraction of the limit free, and count at most this many sharers.
SHARED_MARGIN_FRACTION = 0.02
# Foreign usage is remembered at its highest for this long (at least).
FOREIGN_MEMORY_MIN_SECONDS = 0.05
# Above a fair share, take more only while this fraction of the capacity is unused.
POOL_SPARE_FRACTION = 0.05
MAX_SHARERS = 16
# Jitter on waits while sharing, as a fraction of one slot's time (W / L).
SHARED_JITTER_SLOTS = 0.5
# Concurrency: Little's law with headroom.
LATENCY_EWMA_WEIGHT = 0.2
CONCURRENCY_HEADROOM = 2.0
MIN_CONCURRENCY = 2
MIN_BURST_SECONDS = 0.1
# No headers: AIMD from the configured start rate.
AIMD_INCREASE_FRACTION = 0.02
AIMD_DECREASE_FACTOR = 0.5
AIMD_MAX_MULTIPLE = 20.0
# Systemic failures: back off after this many consecutive 5xx / no-response outcomes.
SYSTEMIC_FAILURE_THRESHOLD = 3
SYSTEMIC_BACKOFF_BASE_SECONDS = 0.5
SYSTEMIC_BACKOFF_MAX_SECONDS = 30.0
# Learning the window from Reset: the smallest of this many observations.
WINDOW_OBSERVATIONS = 256
# ...and the first estimate only from this many: windows do not shrink much once learned, so a
# first answer that came late (a new connection, a loaded server) must not set it alone.
WINDOW_FIRST_OBSERVATIONS = 3
WINDOW_CHANGE_LOG_FRACTION = 0.05
# Log the rate only when it moves by more than this fraction.
RATE_CHANGE_LOG_FRACTION = 0.1

SERVER_ERRORS = "server_errors"


# -- headers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaHeaders:
    """What one response says about the key's quota; None where it says nothing usable."""

    limit: int | None = None  # requests per window
    remaining: int | None = None  # requests left in the window, ≤ limit
    reset_seconds: float | None = None  # from now until the oldest counted request leaves, ≥ 0
    window_seconds: float | None = None  # the window's length (IETF policy `w`)

    @property
    def any(self) -> bool:
        return self.limit is not None or self.remaining is not None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip().strip('"'))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(raw: str | None, *, minimum: int = 0) -> int | None:
    value = _number(raw)
    if value is None or value < minimum or value > MAX_LIMIT:
        return None
    return math.floor(value)


def _params(member: str) -> dict[str, str]:
    """`"default";q=100;w=60` or `limit=100, remaining=5` → {"q": "100", "w": "60"}."""
    found: dict[str, str] = {}
    for part in member.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if sep:
            found.setdefault(key.strip().lower(), value.strip())
    return found


def _first_member(field: str) -> str:
    # Structured-field lists separate policies with commas, but the older draft separates the
    # parameters of a single item with commas too: only split when a new item starts.
    members = [m for m in field.split(",") if m.strip()]
    if not members:
        return ""
    first = members[0]
    for more in members[1:]:
        if "=" in more and not more.strip().startswith('"'):
            first += "," + more
        else:
            break
    return first


def _delta_from_reset(
    raw: str | None, *, wall_now: float, server_now: float | None
) -> float | None:
    value = _number(raw)
    if value is None:
        return None
    if value > EPOCH_THRESHOLD_SECONDS:
        now = wall_now
        if server_now is not None and abs(server_now - wall_now) > CLOCK_SKEW_TOLERANCE_SECONDS:
            now = server_now  # our clock is off; the server's Date is the better reference
        value -= now
    if value > MAX_WINDOW_SECONDS:
        return None  # far future: hostile or broken, say nothing
    return max(0.0, value)  # in the past: the oldest request has already left


def _server_now(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("date")
    if not raw:
        return None
    try:
        return email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def parse_quota_headers(headers: Mapping[str, str], *, wall_now: float) -> QuotaHeaders:
    """Read Pivotal's `X-RateLimit-*` or, failing that, the IETF `RateLimit*` fields.

    Hostile values (negative, NaN, non-numeric, absurdly large, Reset far in the future) are
    dropped; `Remaining` above `Limit` is clamped to it; a Reset in the past counts as now.
    """
    h = _lower(headers)
    server_now = _server_now(h)
    limit = _count(h.get("x-ratelimit-limit"), minimum=1)
    remaining = _count(h.get("x-ratelimit-remaining"))
    reset = _delta_from_reset(h.get("x-ratelimit-reset"), wall_now=wall_now, server_now=server_now)
    window: float | None = None
    if not any(name.startswith("x-ratelimit-") for name in h):
        limit, remaining, reset, window = _parse_ietf(h)
    if limit is not None and remaining is not None:
        remaining = min(remaining, limit)
    return QuotaHeaders(
        limit=limit, remaining=remaining, reset_seconds=reset, window_seconds=window
    )


def _parse_ietf(h: Mapping[str, str]) -> tuple[int | None, int | None, float | None, float | None]:
    """draft-ietf-httpapi-ratelimit-headers, the `limit=…, remaining=…, reset=…` generation,
    the structured `"name";r=…;t=…` one, and the oldest separate `RateLimit-Limit` fields."""
    policy = _params(_first_member(h.get("ratelimit-policy", "")))
    limit = _count(policy.get("q"), minimum=1)
    if limit is None:  # older form: `100;w=60` (the item itself is the quota)
        head = h.get("ratelimit-policy", "").split(",")[0].split(";")[0]
        limit = _count(head, minimum=1)
    window = _number(policy.get("w"))
    if window is not None and not 0 < window <= MAX_WINDOW_SECONDS:
        window = None
    fields = _params(_first_member(h.get("ratelimit", "")))
    limit = _count(fields.get("limit"), minimum=1) or limit
    remaining = _count(fields.get("remaining", fields.get("r")))
    reset = _number(fields.get("reset", fields.get("t")))
    if remaining is None:
        remaining = _count(h.get("ratelimit-remaining"))
        limit = limit or _count(h.get("ratelimit-limit"), minimum=1)
        reset = _number(h.get("ratelimit-reset")) if reset is None else reset
    if reset is not None:  # delta seconds in every IETF generation
        reset = None if reset > MAX_WINDOW_SECONDS else max(0.0, reset)
    return limit, remaining, reset, window


# -- the limiter ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterSnapshot:
    """The limiter's state at one moment, for `pivotal-sync status`, logs and lag estimates."""

    rate_per_second: float  # sustained requests per second this replica expects to send
    tokens: float  # requests that may go right now (may be negative: over the limit)
    learned_limit: int | None  # requests per window, from the headers (None: never seen)
    window_seconds: float  # the window's length, hinted, announced or learned
    last_remaining: int | None  # Remaining from the latest response
    in_flight: int  # permits handed out and not yet completed
    concurrency_limit: int  # permits allowed out at once now
    blocked_until: float | None  # monotonic time a Retry-After or backoff ends, if any
    paused_reasons: frozenset[str]  # why acquire() is blocked ("auth", "server_errors")


class Permit:
    """Leave to send one request. Call exactly one of `complete` or `failed`, once."""

    __slots__ = ("_done", "_limiter", "sent_at", "seq")

    def __init__(self, limiter: RateLimiter, seq: int, sent_at: float) -> None:
        self._limiter = limiter
        self._done = False
        self.seq = seq  # order of sending, 1-based
        self.sent_at = sent_at  # monotonic time the permit was handed out

    @property
    def done(self) -> bool:
        return self._done

    def _finish(self) -> None:
        if self._done:
            raise RuntimeError("a permit is completed or failed exactly once")
        self._done = True

    def complete(self, status: int, headers: Mapping[str, str]) -> None:
        """A response arrived (any status): retune from its headers, free the slot."""
        self._finish()
        self._limiter._on_response(self, status, headers)

    def failed(self, *, systemic: bool = True) -> None:
        """No response: free the slot (it stays counted in the window: the request may have
        arrived). A timeout or connection error is a systemic failure; a bug in the daemon
        (`systemic=False`) says nothing about the API."""
        self._finish()
        self._limiter._on_failure(self, systemic=systemic)


class RateLimiter:
    """An adaptive token bucket and concurrency limit for one API key (see the module doc)."""

    def __init__(
        self,
        *,
        initial_rate_per_minute: float,
        max_in_flight: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_retry_after_seconds: float = 300.0,
        window_seconds: float | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._max_retry_after = max(0.0, max_retry_after_seconds)
        # Equal jitter: a systemic pause is never much shorter than planned.
        self._systemic_backoff = Backoff(
            SYSTEMIC_BACKOFF_BASE_SECONDS,
            SYSTEMIC_BACKOFF_MAX_SECONDS,
            min_share=0.5,
            rng=self._rng,
        )
        self._max_in_flight = max(1, max_in_flight)
        # Headerless AIMD bucket.
        self._start_rate = max(initial_rate_per_minute, 0.001) / 60.0
        self._rate = self._start_rate
        self._bucket = 1.0
        self._bucket_at = clock()
        # The quota ledger.
        self._limit: int | None = None
        self._window = window_seconds if window_seconds and window_seconds > 0 else None
        self._window_fixed = self._window is not None
        self._window_observations: deque[float] = deque(maxlen=WINDOW_OBSERVATIONS)
        self._sends: list[float] = []  # monotonic send times, oldest first
        # When each send's answer came back (inf while in flight), sorted. A send arrived at
        # the latest a fastest round trip before its answer: see `_latest_arrival_offset`.
        self._answered: list[float] = []
        self._fastest_round_trip: float | None = None
        self._first_seq = 1  # seq of self._sends[0]
        self._seq = 0  # last seq handed out
        self._applied_seq = 0  # latest-sent request whose response has been applied
        self._foreign = 0.0
        self._foreign_history: deque[tuple[float, float]] = deque()
        self._foreign_seen_at: float | None = None
        self._sharers = 1
        self._reset_at: float | None = None
        self._last_probe = -math.inf
        self._last_remaining: int | None = None
        self._extra_slack = 0.0
        # Concurrency.
        self._latency: float | None = None
        self._in_flight = 0
        # Stops.
        self._blocked_until: float | None = None
        self._backoff_until: float | None = None
        self._systemic_failures = 0
        self._paused: set[str] = set()
        self._changed = asyncio.Event()
        self._logged_rate: float | None = None
        self._publish(clock())

    # -- public API --------------------------------------------------------------------------

    async def acquire(self) -> Permit:
        """Wait until sending is not paused, a concurrency slot is free and a token is there.
        Cancellation while waiting takes nothing."""
        while True:
            now = self._clock()
            self._end_backoff_if_over(now)
            changed = self._changed
            delay = self._delay(now)
            if delay == 0.0:
                return self._take(now)
            await self._wait(delay, changed)

    def probe(self) -> Permit:
        """Leave for one probe now, past any pause or stop (the auth probe): the server
        counts it, so the ledger must too, or it would later pass for another replica's."""
        return self._take(self._clock())

    @asynccontextmanager
    async def request(self) -> AsyncIterator[Permit]:
        """`async with limiter.request() as permit:` — leaving without `complete` is `failed`."""
        permit = await self.acquire()
        try:
            yield permit
        finally:
            if not permit.done:
                permit.failed()

    def pause(self, reason: str) -> None:
        """Stop handing out permits until `resume(reason)`."""
        if reason in self._paused:
            return
        self._paused.add(reason)
        log.warning("sending_paused", reason=reason)
        if self._metrics is not None:
            self._metrics.paused.labels(reason=reason).set(1)
        self._notify()

    def resume(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        log.info("sending_resumed", reason=reason)
        if self._metrics is not None:
            self._metrics.paused.labels(reason=reason).set(0)
        self._notify()

    @property
    def paused_reasons(self) -> frozenset[str]:
        reasons = set(self._paused)
        if self._backoff_until is not None and self._clock() < self._backoff_until:
            reasons.add(SERVER_ERRORS)
        return frozenset(reasons)

    def snapshot(self) -> LimiterSnapshot:
        now = self._clock()
        until = max(
            (t for t in (self._blocked_until, self._backoff_until) if t is not None and t > now),
            default=None,
        )
        return LimiterSnapshot(
            rate_per_second=self._sustained_rate(),
            tokens=self._tokens(now),
            learned_limit=self._limit,
            window_seconds=self._window_now(),
            last_remaining=self._last_remaining,
            in_flight=self._in_flight,
            concurrency_limit=self._concurrency_limit(now),
            blocked_until=until,
            paused_reasons=self.paused_reasons,
        )

    def seconds_to_send(self, requests: int) -> float:
        """How long `requests` more requests take at the current learned rate."""
        now = self._clock()
        waiting = max(0, requests - max(0, math.floor(self._tokens(now))))
        if waiting == 0:
            return 0.0
        rate = self._sustained_rate()
        if rate <= 0:
            return math.inf
        blocked = max((t - now for t in (self._blocked_until, self._backoff_until) if t), default=0)
        return max(0.0, blocked) + waiting / rate

    # -- waiting -----------------------------------------------------------------------------

    def _delay(self, now: float) -> float | None:
        """0: go now; a number: look again after that many seconds; None: wait for a change."""
        if self._paused:
            return None
        stops = [t - now for t in (self._blocked_until, self._backoff_until) if t and t > now]
        if stops:
            return max(stops)
        if self._in_flight >= self._concurrency_limit(now):
            return None
        return self._quota_delay(now) if self._limit is not None else self._bucket_delay(now)

    async def _wait(self, delay: float | None, changed: asyncio.Event) -> None:
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(changed.wait())]
        if delay is not None:
            waiters.append(asyncio.ensure_future(self._sleep_for(delay)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _sleep_for(self, seconds: float) -> None:
        await self._sleep(seconds)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _take(self, now: float) -> Permit:
        # No await from here on: a cancelled acquire never holds a slot or a token.
        if self._limit is None:
            self._refill(now)
            self._bucket = max(0.0, self._bucket - 1.0)
        elif self._tokens(now) < 1.0:
            self._last_probe = now  # sent on the strength of Reset passing, not of a token
        self._seq += 1
        self._sends.append(now)
        self._answered.append(math.inf)
        self._in_flight += 1
        self._prune(now)
        self._publish(now)
        return Permit(self, self._seq, now)

    # -- the quota ledger --------------------------------------------------------------------

    def _window_now(self) -> float:
        return self._window if self._window is not None else DEFAULT_WINDOW_SECONDS

    def _slot_slack(self) -> float:
        return SLOT_SLACK_SECONDS + self._extra_slack

    def _sharing(self, now: float) -> bool:
        seen = self._foreign_seen_at
        return seen is not None and now - seen < 2 * self._window_now()

    def _capacity(self, now: float) -> float:
        limit = self._limit or 0
        margin = max(1, math.ceil(SHARED_MARGIN_FRACTION * limit)) if self._sharing(now) else 0
        return float(limit - margin)

    def _latest_arrival_offset(self) -> float:
        """A send reached the server at the latest this long before its answer came back.
        One global offset keeps `_answered` sorted by latest arrival, too."""
        return self._fastest_round_trip or 0.0

    def _sent_since(self, moment: float) -> int:
        """How many of our sends can have arrived at the server after `moment` (incl. those
        in flight)."""
        cutoff = moment + self._latest_arrival_offset()
        return len(self._answered) - bisect.bisect_right(self._answered, cutoff)

    def _held_index(self, now: float) -> int:
        """Index in `_answered` of our oldest send still holding a slot."""
        cutoff = now - self._window_now() - self._slot_slack() + self._latest_arrival_offset()
        return bisect.bisect_right(self._answered, cutoff)

    def _held(self, now: float) -> int:
        return self._sent_since(now - self._window_now() - self._slot_slack())

    def _usage(self, now: float) -> float:
        own = self._held(now)
        uncounted = min(own, self._seq - self._applied_seq)
        sharers = self._sharers if self._sharing(now) else 1
        return self._foreign + own + (sharers - 1) * uncounted

    def _tokens(self, now: float) -> float:
        if self._limit is None:
            self._refill(now)
            return self._bucket
        capacity = self._capacity(now)
        tokens = capacity - self._usage(now)
        if self._sharing(now):
            # Above a fair share, re-use freed slots only while the pool has plenty spare: the
            # slots left unused are taken by sharers below theirs, and shares converge.
            own = self._held(now)
            fair = capacity / self._sharers
            pool = capacity - self._foreign - own
            if own >= fair and pool < max(2.0, POOL_SPARE_FRACTION * capacity):
                tokens = min(tokens, fair - own)
        return tokens

    def _quota_delay(self, now: float) -> float | None:
        excess = 1.0 - self._tokens(now)
        if excess <= 0:
            return 0.0
        start = self._held_index(now)
        need = math.ceil(excess)
        if need <= len(self._answered) - start:
            # Our own slots free in order of arrival: wait for the need-th oldest (in flight:
            # its answer will tell). No jitter: re-using our own slot on time collides with no one.
            answered = self._answered[start + need - 1]
            if answered == math.inf:
                return None
            arrived = answered - self._latest_arrival_offset()
            return max(
                LEDGER_RECHECK_SECONDS, arrived + self._window_now() + self._slot_slack() - now
            )
        if self._seq > self._applied_seq:
            return None  # answers on their way will tell more
        # Foreign requests fill the window: probe once the oldest counted one has left.
        slot = self._window_now() / max(1, self._limit or 1)
        probe_at = max(self._reset_at or now, self._last_probe + max(slot, MIN_BURST_SECONDS))
        return self._jittered(now, max(0.0, probe_at - now))

    def _jittered(self, now: float, delay: float) -> float:
        if delay <= 0 or not self._sharing(now):
            return delay
        slot = self._window_now() / max(1, self._limit or 1)
        return delay + self._rng.uniform(0, SHARED_JITTER_SLOTS * slot)

    def _prune(self, now: float) -> None:
        # Keep two windows: learning the window needs sends older than the current guess.
        horizon = now - 2 * max(self._window_now(), 1.0) - self._slot_slack()
        drop = bisect.bisect_right(self._sends, horizon)
        if drop:
            del self._sends[:drop]
            self._first_seq += drop
        del self._answered[: bisect.bisect_right(self._answered, horizon)]

    def _settle(self, permit: Permit, now: float, *, counted: bool = True) -> None:
        """The permit's send is no longer in flight: it reached the server before now, and no
        later than the fastest round trip seen allows (a send that waited for a connection or
        queued behind a burst arrived late, and its slot frees late too). A send the server did
        not count (a 429, `counted=False`) holds no slot at all."""
        round_trip = max(0.0, now - permit.sent_at)
        if self._fastest_round_trip is None or round_trip < self._fastest_round_trip:
            self._fastest_round_trip = round_trip
        if self._answered and self._answered[-1] == math.inf:
            self._answered.pop()  # in-flight sends are all inf: any one of them is this one
        if counted:
            bisect.insort(self._answered, now)

    def _apply_quota(self, permit: Permit, quota: QuotaHeaders, now: float) -> None:
        if quota.window_seconds is not None and quota.window_seconds != self._window:
            self._window, self._window_fixed = quota.window_seconds, True
            self._log_learned()
        if quota.limit is not None and quota.limit != self._limit:
            self._limit = quota.limit
            self._log_learned()
        if quota.remaining is not None:
            self._last_remaining = quota.remaining
        if self._limit is None or quota.remaining is None or permit.seq <= self._applied_seq:
            return  # nothing to count with, or an older answer than one already applied
        self._applied_seq = permit.seq
        counted = self._limit - min(quota.remaining, self._limit)
        index = permit.seq - self._first_seq  # our send `permit`, in self._sends
        if not 0 <= index < len(self._sends):
            return  # an answer so late its send has left the ledger
        # Which of our sends can the server have counted when this one arrived (no sooner than
        # it was sent)? Any whose latest arrival is within a window before that: also those
        # sent after it (many in flight reorder) and those still in flight. An upper bound, so
        # our own late arrivals are never mistaken for another replica's requests, which would
        # switch on the shared-key margin for nothing.
        ours = self._sent_since(permit.sent_at - self._window_now() - SLOT_SLACK_SECONDS)
        self._observe_foreign(now, float(max(0, counted - ours)))
        if quota.reset_seconds is not None:
            self._reset_at = now + quota.reset_seconds
        if self._foreign >= 1:
            if not self._sharing(now):
                log.info("key_shared", foreign_requests=round(self._foreign), counted=counted)
            self._foreign_seen_at = now
            # Sharers holding about what we hold: an estimate that is right once shares are fair.
            sharers = max(2, min(MAX_SHARERS, round((self._foreign + ours) / max(1, ours))))
            if sharers != self._sharers:
                log.info("key_sharers_estimated", sharers=sharers)
            self._sharers = sharers
        elif quota.reset_seconds is not None and quota.remaining > 0 and 0 < counted <= index + 1:
            # Remaining > 0: not clamped, so `counted` is the server's true count, and the
            # oldest request it counts is our counted-th most recent send.
            oldest = self._sends[index - counted + 1]
            self._learn_window(now + quota.reset_seconds - oldest)

    def _observe_foreign(self, now: float, foreign: float) -> None:
        """Foreign usage counts at its highest over the last moments: a foreign slot that has
        just freed is about to be re-used by its owner, and must not be taken by us."""
        history = self._foreign_history
        history.append((now, foreign))
        horizon = now - self._foreign_memory()
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()  # keeps the last observation older than the horizon
        # ...unless it is a window old: every request it counted has left since. (After a
        # long Retry-After, the count seen when the 429 came would otherwise hold the key's
        # whole window as taken until a second answer arrived.)
        if len(history) > 1 and history[0][0] <= now - self._window_now():
            history.popleft()
        self._foreign = max(f for _, f in history)

    def _foreign_memory(self) -> float:
        latency = self._latency or 0.0
        return max(FOREIGN_MEMORY_MIN_SECONDS, 2 * latency + 4 * self._slot_slack())

    def _learn_window(self, observed: float) -> None:
        """Alone, Reset is when our oldest counted send leaves, so Reset − its send time is W
        plus up to one second (Reset is whole seconds, rounded up) plus the one-way delay.
        The smallest of recent observations is the tightest bound that is still safe."""
        if self._window_fixed or not 0 < observed <= MAX_WINDOW_SECONDS + 1:
            return
        if self._window is not None and observed < self._window - 1.5:
            return  # windows do not shrink: a send misattributed around the window's edge
        self._window_observations.append(observed)
        if self._window is None and len(self._window_observations) < WINDOW_FIRST_OBSERVATIONS:
            return  # the very first answer (a cold connection, a busy server) may be late
        # Whole-second windows: min − 0.5 rounds to W however the sends fall within a second.
        estimate = float(max(1, round(min(self._window_observations) - 0.5)))
        old = self._window_now()
        self._window = estimate
        if abs(estimate - old) > WINDOW_CHANGE_LOG_FRACTION * old:
            self._log_learned()

    def _log_learned(self) -> None:
        log.info("rate_limit_learned", limit=self._limit, window_seconds=self._window_now())

    # -- the headerless bucket ---------------------------------------------------------------

    def _refill(self, now: float) -> None:
        burst = max(1.0, self._rate)  # one second's worth
        self._bucket = min(burst, self._bucket + (now - self._bucket_at) * self._rate)
        self._bucket_at = now

    def _bucket_delay(self, now: float) -> float:
        self._refill(now)
        missing = 1.0 - self._bucket
        return 0.0 if missing <= 1e-9 else missing / self._rate  # float dust counts as a token

    # -- responses ---------------------------------------------------------------------------

    def _on_response(self, permit: Permit, status: int, headers: Mapping[str, str]) -> None:
        now = self._clock()
        self._in_flight -= 1
        self._settle(permit, now, counted=status != 429)
        self._observe_latency(now - permit.sent_at)
        quota = parse_quota_headers(headers, wall_now=self._wall())
        self._apply_quota(permit, quota, now)
        if status == 429:
            self._on_rate_limited(quota, headers, now)
        elif not quota.any and self._limit is None and status < 500:
            self._rate = min(
                self._start_rate * AIMD_MAX_MULTIPLE,
                self._rate + AIMD_INCREASE_FRACTION * self._start_rate,
            )
        if status >= 500:
            self._systemic_failure(now, f"http_{status}")
        else:
            self._systemic_success()
        if status != 429:
            self._extra_slack *= EXTRA_SLACK_DECAY
        self._publish(now)
        self._notify()

    def _on_failure(self, permit: Permit, *, systemic: bool) -> None:
        now = self._clock()
        self._in_flight -= 1
        self._settle(permit, now)
        if systemic:
            self._systemic_failure(now, "no_response")
        self._publish(now)
        self._notify()

    def _on_rate_limited(self, quota: QuotaHeaders, headers: Mapping[str, str], now: float) -> None:
        wait = self._retry_after_seconds(quota, headers)
        until = now + wait
        self._blocked_until = max(self._blocked_until or until, until)
        if self._limit is None:
            self._rate = max(
                self._start_rate / AIMD_MAX_MULTIPLE, self._rate * AIMD_DECREASE_FACTOR
            )
        elif self._sharing(now):
            self._sharers = min(MAX_SHARERS, self._sharers + 1)
        else:  # alone, the ledger said yes: freed slots are re-used too early
            self._extra_slack = min(MAX_EXTRA_SLACK_SECONDS, max(0.01, 2 * self._extra_slack))
        if self._metrics is not None:
            self._metrics.rate_limited.inc()
            self._metrics.retry_after.inc(wait)
        log.warning("rate_limited", retry_after_seconds=round(wait, 3), limit=self._limit)

    def _retry_after_seconds(self, quota: QuotaHeaders, headers: Mapping[str, str]) -> float:
        raw = _lower(headers).get("retry-after")
        value = parse_retry_after(raw, wall_now=self._wall())
        if value is None:
            fallback = quota.reset_seconds
            if fallback is None or fallback <= 0:
                fallback = DEFAULT_RETRY_AFTER_SECONDS
            fallback = min(fallback, self._max_retry_after)
            if raw is not None:
                log.warning("retry_after_invalid", retry_after=raw[:64], used_seconds=fallback)
            return fallback
        if value < 0 or value > self._max_retry_after:
            clamped = min(max(value, 0.0), self._max_retry_after)
            log.warning("retry_after_clamped", retry_after=raw, used_seconds=clamped)
            return clamped
        return value

    # -- systemic failures -------------------------------------------------------------------

    def _systemic_failure(self, now: float, cause: str) -> None:
        self._systemic_failures += 1
        excess = self._systemic_failures - SYSTEMIC_FAILURE_THRESHOLD
        if excess < 0:
            return
        backoff = self._systemic_backoff.delay(excess + 1)
        starting = self._backoff_until is None
        self._backoff_until = max(self._backoff_until or 0.0, now + backoff)
        if starting:
            log.warning("client_backed_off", cause=cause, failures=self._systemic_failures)
            if self._metrics is not None:
                self._metrics.paused.labels(reason=SERVER_ERRORS).set(1)

    def _systemic_success(self) -> None:
        self._systemic_failures = 0
        if self._backoff_until is not None:
            self._backoff_until = None
            self._backoff_ended()

    def _end_backoff_if_over(self, now: float) -> None:
        if self._backoff_until is not None and now >= self._backoff_until:
            self._backoff_until = None
            self._backoff_ended()

    def _backoff_ended(self) -> None:
        log.info("client_backoff_ended")
        if self._metrics is not None:
            self._metrics.paused.labels(reason=SERVER_ERRORS).set(0)

    # -- concurrency -------------------------------------------------------------------------

    def _observe_latency(self, sample: float) -> None:
        sample = max(0.0, sample)
        if self._latency is None:
            self._latency = sample
            return
        self._latency += LATENCY_EWMA_WEIGHT * (sample - self._latency)

    def _concurrency_limit(self, now: float) -> int:
        if self._latency is None:
            return 1  # until the first answer shows whether there are headers to pace by
        latency = max(self._latency, 1e-6)
        if self._limit is None:
            rate = self._rate
        else:
            # Tokens now plus our slots freeing within one latency, spent over that latency.
            soon = self._held_index(now + latency) - self._held_index(now)
            available = max(0.0, self._tokens(now)) + soon
            rate = max(self._sustained_rate(), available / max(latency, MIN_BURST_SECONDS))
        wanted = math.ceil(CONCURRENCY_HEADROOM * rate * latency)
        return max(min(MIN_CONCURRENCY, self._max_in_flight), min(self._max_in_flight, wanted))

    # -- observability -----------------------------------------------------------------------

    def _sustained_rate(self) -> float:
        if self._limit is None:
            return self._rate
        now = self._clock()
        capacity = self._capacity(now)
        share = capacity - self._foreign
        if self._sharing(now):  # at least a fair share: the shares converge to it
            share = max(share, capacity / self._sharers)
        return max(0.0, share) / self._window_now()

    def _publish(self, now: float) -> None:
        rate = self._sustained_rate()
        if self._logged_rate is None or abs(rate - self._logged_rate) > (
            RATE_CHANGE_LOG_FRACTION * self._logged_rate
        ):
            if self._logged_rate is not None:
                log.info("rate_changed", rate_per_second=round(rate, 4), limit=self._limit)
            self._logged_rate = rate
        m = self._metrics
        if m is None:
            return
        m.bucket_rate.set(rate)
        m.bucket_tokens.set(self._tokens(now))
        m.window_seconds.set(self._window_now())
        if self._limit is not None:
            m.learned_limit.set(self._limit)
        if self._last_remaining is not None:
            m.last_remaining.set(self._last_remaining)
        m.concurrency_limit.set(self._concurrency_limit(now))
        m.in_flight.set(self._in_flight)
