"""Load generator for the sandbox: how many requests a second can it serve on one core?

Starts `pivotal-sync sandbox` (rate limiting on, with a limit too large to exhaust), creates a
few customers, then drives a mix of POST /customers (with Idempotency-Key, some replays), PATCH
and GET for a bounded time from client *processes* speaking raw HTTP/1.1 keep-alive over asyncio
streams, so that the client is not what limits the figure.

    python -m bench.sandbox_load --seconds 10 --clients 1 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

from daemon.sandbox.testing import SandboxAdmin, running_sandbox

BENCH_KEY = "pivotal_bench_load"
HUGE_LIMIT = 1_000_000_000
SEED_CUSTOMERS = 200


def _request(method: str, path: str, host: str, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        f"{method} /api/v1{path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {BENCH_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _connection(
    host: str, port: int, deadline: float, worker: int, statuses: Counter[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random(worker)
    authority = f"{host}:{port}"
    sequence = 0
    while time.perf_counter() < deadline:
        roll = rng.random()
        target = rng.randint(1, SEED_CUSTOMERS)
        if roll < 0.34:
            sequence += 1
            # One create in five repeats the previous key and body: an idempotent replay.
            number = sequence - 1 if sequence % 5 == 0 else sequence
            body = json.dumps({"name": f"Load {worker}-{number}"}).encode()
            raw = _request(
                "POST",
                "/customers",
                authority,
                body,
                f"Idempotency-Key: load-{worker}-{number}\r\n",
            )
        elif roll < 0.67:
            body = json.dumps({"plan": f"plan-{sequence}", "mrr": sequence}).encode()
            raw = _request("PATCH", f"/customers/{target}", authority, body)
        else:
            raw = _request("GET", f"/customers/{target}", authority)
        writer.write(raw)
        statuses[await _read_response(reader)] += 1
    writer.close()


async def _client(
    host: str, port: int, seconds: float, connections: int, offset: int
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter() + seconds
    await asyncio.gather(
        *(_connection(host, port, deadline, offset + i, statuses) for i in range(connections))
    )
    return statuses


def _client_process(url: str, seconds: float, connections: int, offset: int) -> dict[int, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return dict(asyncio.run(_client(parts.hostname, parts.port, seconds, connections, offset)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--connections", type=int, default=32, help="connections per client")
    args = parser.parse_args()
    with running_sandbox("--key", f"{BENCH_KEY}:{HUGE_LIMIT}", "--request-log-size", "1000") as url:
        with httpx.Client(base_url=f"{url}/api/v1") as seed:
            for i in range(SEED_CUSTOMERS):
                seed.post(
                    "/customers",
                    json={"name": f"Seed {i}"},
                    headers={"Authorization": f"Bearer {BENCH_KEY}"},
                ).raise_for_status()
        jobs = [(url, args.seconds, args.connections, n * 10_000) for n in range(args.clients)]
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
            results = pool.starmap(_client_process, jobs)
        elapsed = time.perf_counter() - started
        total: Counter[int] = Counter()
        for result in results:
            total.update(result)
        with SandboxAdmin(url) as admin:
            stats = admin.stats()
    count = sum(total.values())
    print(
        f"requests: {count} in {elapsed:.1f} s ({args.clients} client processes, "
        f"{args.clients * args.connections} connections)"
    )
    print(f"statuses: {dict(sorted(total.items()))}")
    print(
        f"sandbox saw: {stats['requests_total']} API requests, 429s: {stats['rate_limited_total']}"
    )
    print(f"throughput: {count / elapsed:.0f} requests/s")
    return 0 if set(total) <= {200, 201} else 1


if __name__ == "__main__":
    raise SystemExit(main())
