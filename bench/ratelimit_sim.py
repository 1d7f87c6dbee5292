"""Offline simulation of `daemon.ratelimit` against a sliding-window server, on virtual time.

No network and no real sleeping: an asyncio event loop whose clock only moves when every task
waits, so a minute of traffic takes a fraction of a second. The server is the sandbox's own
`SlidingWindow` (the same headers as Pivotal: X-RateLimit-Limit / -Remaining / -Reset in whole
epoch seconds rounded up, Retry-After on a 429, 429s not counted). A request reaches the server
after half its latency and its answer returns after the other half.

    .venv/bin/python -m bench.ratelimit_sim            # every scenario, one table
    .venv/bin/python -m bench.ratelimit_sim --seed 7   # another draw of latencies and jitter

Columns: drain time ÷ the physical limit ⌈N/L − 1⌉·W, 429s ÷ requests; notes per scenario
(sustained rate ÷ the limit, each replica's share, what happened around a limit change).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import selectors
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from daemon.ratelimit import RateLimiter
from daemon.sandbox.window import SlidingWindow

EPOCH_OFFSET_SECONDS = 1_750_000_000.0
T = TypeVar("T")


class _VirtualSelector(selectors.SelectSelector):
    """A selector that never waits: it moves the loop's virtual clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("simulation deadlocked: every task waits and no timer is set")
        self.now += max(0.0, timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: `time()` jumps to the next timer instead of sleeping."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@dataclass
class Server:
    """One key's sliding window; `limit` can be changed while running."""

    limit: int
    window_seconds: float
    accepted: list[float] = field(default_factory=list)  # virtual times of accepted requests
    rejected: int = 0

    def __post_init__(self) -> None:
        self.window = SlidingWindow(self.limit, self.window_seconds)

    def set_limit(self, limit: int) -> None:
        self.limit = self.window.limit = limit

    def handle(self, now: float) -> tuple[int, dict[str, str]]:
        wall = EPOCH_OFFSET_SECONDS + now
        retry = self.window.retry_after(wall)
        if retry is None:
            self.window.count(wall)
            self.accepted.append(now)
            return 201, self.window.state(wall).headers()
        self.rejected += 1
        headers = self.window.state(wall).headers()
        headers["retry-after"] = str(retry)
        return 429, headers


@dataclass
class Replica:
    """A backlog of `backlog` creates sent through one limiter."""

    name: str
    limiter: RateLimiter
    backlog: int
    done: int = 0
    sent: int = 0
    rejected: int = 0
    finished_at: float | None = None


async def drive(
    replica: Replica,
    server: Server,
    latency: Callable[[], float],
    start_at: float = 0.0,
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(start_at)
    to_send = replica.backlog
    changed = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def one(permit: Any) -> None:
        nonlocal to_send
        rtt = latency()
        await asyncio.sleep(rtt / 2)
        status, headers = server.handle(loop.time())
        await asyncio.sleep(rtt / 2)
        permit.complete(status, headers)
        if status == 429:
            replica.rejected += 1
            to_send += 1
        else:
            replica.done += 1
            if replica.done == replica.backlog:
                replica.finished_at = loop.time()
        changed.set()

    while replica.done < replica.backlog:
        if to_send == 0:
            changed.clear()
            await changed.wait()
            continue
        permit = await replica.limiter.acquire()
        if replica.done >= replica.backlog:
            permit.failed()
            break
        to_send -= 1
        replica.sent += 1
        task = asyncio.create_task(one(permit))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


def physical_limit(n: int, limit: int, window: float) -> float:
    return max(0, math.ceil(n / limit - 1)) * window


@dataclass
class Result:
    scenario: str
    drain_seconds: float
    limit_seconds: float
    requests: int
    rejected: int
    notes: str

    @property
    def ratio(self) -> float:
        return self.drain_seconds / self.limit_seconds if self.limit_seconds else math.nan


def make_limiter(rng: random.Random, max_in_flight: int, hint: float | None) -> RateLimiter:
    loop = asyncio.get_running_loop()
    return RateLimiter(
        initial_rate_per_minute=60,
        max_in_flight=max_in_flight,
        clock=loop.time,
        wall_clock=lambda: EPOCH_OFFSET_SECONDS + loop.time(),
        rng=random.Random(rng.random()),
        window_seconds=hint,
    )


async def backlog(
    name: str,
    rng: random.Random,
    *,
    n: int,
    limit: int,
    window: float,
    replicas: int = 1,
    latency: tuple[float, float] = (0.002, 0.001),
    max_in_flight: int = 16,
    hint: float | None = None,
    stagger: float = 0.0,
) -> Result:
    server = Server(limit, window)
    mean, spread = latency

    def draw() -> float:
        return max(0.0005, rng.uniform(mean - spread, mean + spread))

    group = [
        Replica(f"r{i}", make_limiter(rng, max_in_flight, hint), n // replicas)
        for i in range(replicas)
    ]
    await asyncio.gather(*(drive(r, server, draw, i * stagger) for i, r in enumerate(group)))
    finished = [r.finished_at or math.inf for r in group]
    notes = ""
    if replicas > 1:
        notes = "finished " + " / ".join(f"{t:.1f}s" for t in finished)
        notes += "; throughput ÷ fair share " + " / ".join(f"{s:.2f}" for s in _shares(group))
        # After the initial burst and before the first replica runs dry: the steady state.
        # Whole windows only: requests come in bursts at the start of each window.
        windows = math.floor((min(finished) - window) / window)
        if windows >= 1:
            steady = [t for t in server.accepted if window <= t < window * (1 + windows)]
            sustained = len(steady) / (windows * limit)
            notes += f"; sustained rate ÷ limit {sustained:.3f}"
    return Result(
        name,
        max(finished),
        physical_limit(n, limit, window),
        sum(r.sent for r in group),
        sum(r.rejected for r in group),
        notes,
    )


def _shares(group: Sequence[Replica]) -> list[float]:
    """Each replica's throughput (its backlog ÷ its drain time) ÷ the mean throughput."""
    rates = [r.backlog / (r.finished_at or math.inf) for r in group]
    fair = sum(rates) / len(rates)
    return [rate / fair for rate in rates]


async def limit_change(rng: random.Random, *, max_in_flight: int = 64) -> Result:
    """L = 60 per 10 s; raised to 600 at 30 s, lowered back to 60 at 60 s; backlog never ends."""
    window, low, high = 10.0, 60, 600
    server = Server(low, window)
    replica = Replica("r0", make_limiter(rng, max_in_flight, None), 100_000)
    loop = asyncio.get_running_loop()
    rejected_at: list[float] = []
    original = server.handle

    def handle(now: float) -> tuple[int, dict[str, str]]:
        status, headers = original(now)
        if status == 429:
            rejected_at.append(now)
        return status, headers

    server.handle = handle  # type: ignore[method-assign]

    async def script() -> None:
        await asyncio.sleep(30)
        server.set_limit(high)
        await asyncio.sleep(30)
        server.set_limit(low)
        await asyncio.sleep(40)
        replica.backlog = replica.done  # stop the driver

    driver = asyncio.create_task(drive(replica, server, lambda: rng.uniform(0.001, 0.003)))
    await script()
    await driver
    del loop

    def accepted(a: float, b: float) -> int:
        return sum(1 for t in server.accepted if a <= t < b)

    first_full = next(
        (t / 10 for t in range(300, 600) if accepted(t / 10, t / 10 + window) >= high * 0.99),
        math.inf,
    )
    late_429 = sum(1 for t in rejected_at if t >= 60 + window)
    notes = (
        f"raised at 30s: {accepted(30, 40)} accepted in the next window (L={high}), "
        f"full rate from {first_full - 30:.1f}s after; lowered at 60s: "
        f"{sum(1 for t in rejected_at if 60 <= t < 70)} 429s in the first window, "
        f"{late_429} after it; {accepted(80, 90)} accepted per window at the end (L={low})"
    )
    return Result(
        "limit 60→600→60 per 10 s", math.nan, math.nan, replica.sent, replica.rejected, notes
    )


def scenarios(seed: int) -> list[Result]:
    rng = random.Random(seed)
    runs: list[Callable[[], Coroutine[Any, Any, Result]]] = [
        lambda: backlog("one replica, N=1000 L=100/10s fast", rng, n=1000, limit=100, window=10),
        lambda: backlog(
            "one replica, same, window hinted 10s", rng, n=1000, limit=100, window=10, hint=10
        ),
        lambda: backlog(
            "three replicas share a key, N=600 L=100/10s",
            rng,
            n=600,
            limit=100,
            window=10,
            replicas=3,
            hint=10,
        ),
        lambda: backlog(
            "three replicas, started 1 s apart",
            rng,
            n=600,
            limit=100,
            window=10,
            replicas=3,
            stagger=1.0,
            hint=10,
        ),
        lambda: backlog(
            "latency 300±100ms, N=400 L=300/10s, 16 in flight",
            rng,
            n=400,
            limit=300,
            window=10,
            latency=(0.3, 0.1),
        ),
        lambda: backlog(
            "latency 300±100ms, N=400 L=300/10s, 128 in flight",
            rng,
            n=400,
            limit=300,
            window=10,
            latency=(0.3, 0.1),
            max_in_flight=128,
        ),
        lambda: limit_change(rng),
    ]
    return [run_virtual(run) for run in runs]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="show the limiter's info logs")
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    print(
        f"{'scenario':<52} {'drain s':>8} {'limit s':>8} {'÷limit':>7} {'requests':>8} {'429s':>6}"
    )
    for r in scenarios(args.seed):
        print(
            f"{r.scenario:<52} {r.drain_seconds:>8.2f} {r.limit_seconds:>8.1f} {r.ratio:>7.3f} "
            f"{r.requests:>8} {r.rejected / max(1, r.requests):>6.2%}"
        )
        if r.notes:
            print(f"    {r.notes}")


if __name__ == "__main__":
    main()
