"""One replica of the quota ledger in its own process, for tests/integration/test_quota_ledger.py.

python -m tests.integration.quota_ledger_worker take DSN KEY_HEX LIMIT SECONDS CLOCK_OFFSET
    takes slots for SECONDS with 8 workers through a `SharedPacer` whose clocks (monotonic
    and wall) are off by CLOCK_OFFSET seconds; each request "answers" at once with the
    limit in its headers; prints the number of slots it was granted.
python -m tests.integration.quota_ledger_worker hold DSN KEY_HEX LIMIT WANT
    reserves WANT slots and never reports them; prints "held" and waits to be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

from daemon.quota_ledger import PostgresLedger, ReserveCall, SharedPacer
from daemon.ratelimit import RateLimiter

WORKERS = 8
WINDOW_SECONDS = 3600.0  # nothing frees while a test runs


async def take(dsn: str, key: bytes, limit: int, seconds: float, offset: float) -> int:
    ledger = PostgresLedger(dsn, key)
    local = RateLimiter(
        initial_rate_per_minute=60,
        max_in_flight=WORKERS,
        clock=lambda: time.monotonic() + offset,
        wall_clock=lambda: time.time() + offset,
        window_seconds=WINDOW_SECONDS,
    )
    pacer = SharedPacer(
        local=local,
        ledger=ledger,
        window_hint_seconds=WINDOW_SECONDS,
        clock=lambda: time.monotonic() + offset,
    )
    granted = 0

    async def worker() -> None:
        nonlocal granted
        while True:
            permit = await pacer.acquire()
            if permit.slot is None:
                raise RuntimeError("the ledger was unavailable: the count would not be exact")
            granted += 1
            permit.complete(200, {"X-RateLimit-Limit": str(limit)})

    stop = asyncio.Event()
    caller = asyncio.create_task(pacer.run(stop))
    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    await asyncio.sleep(seconds)
    for task in workers:
        task.cancel()
    results = await asyncio.gather(*workers, return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    stop.set()
    await caller
    await ledger.close()
    return granted


async def hold(dsn: str, key: bytes, limit: int, want: int) -> None:
    ledger = PostgresLedger(dsn, key)
    answer = await ledger.reserve(
        ReserveCall(want=want, in_flight=(), limit=limit, window_seconds=1.0, window_fixed=True)
    )
    print(f"held {len(answer.granted)}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    mode, dsn, key_hex = sys.argv[1:4]
    key = bytes.fromhex(key_hex)
    if mode == "take":
        limit, seconds, offset = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
        print(asyncio.run(take(dsn, key, limit, seconds, offset)), flush=True)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(hold(dsn, key, int(sys.argv[4]), int(sys.argv[5])))


if __name__ == "__main__":
    main()
