"""What one Pivotal request costs the daemon's CPU: httpx on aiohttp against httpx on httpcore.

    python -m bench.http_client [--requests 3000] [--rounds 3] [--in-flight 64]

Sends customer PATCHes to the sandbox (a process of its own) through `PivotalClient`,
`--in-flight` at a time, once with the daemon's engine (`daemon/aiohttp_transport.py`) and
once with httpx's default one, httpcore, split as the daemon used to split it: pools of 4
connections, each request to the least busy (one pool of 64 walks all its connections on every
request). The variants take turns in every round so machine noise hits them alike; the table
gives the best round of each.
CPU is this process's own (user + system): the sandbox's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import SecretStr

from daemon.pivotal import PivotalClient
from daemon.sandbox.testing import running_sandbox

KEY = "pivotal_live_bench_http"
POOL_CONNECTIONS = 4  # the former daemon's pools


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class HttpcorePools:
    """The former request path: PivotalClients on httpcore pools of 4, the least busy first."""

    def __init__(self, api: str, connections: int) -> None:
        pools = max(1, connections // POOL_CONNECTIONS)
        self.clients = [
            PivotalClient(
                base_url=api,
                api_key=SecretStr(KEY),
                transport=httpx.AsyncHTTPTransport(
                    limits=httpx.Limits(
                        max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS
                    )
                ),
            )
            for _ in range(pools)
        ]
        self.busy = [0] * pools

    async def update_customer(self, pivotal_id: str, body: dict[str, Any]) -> int:
        pool = min(range(len(self.clients)), key=self.busy.__getitem__)
        self.busy[pool] += 1
        try:
            return (await self.clients[pool].update_customer(pivotal_id, body)).status
        finally:
            self.busy[pool] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class Aiohttp:
    """The daemon's request path as it is."""

    def __init__(self, api: str, connections: int) -> None:
        self.client = PivotalClient(
            base_url=api, api_key=SecretStr(KEY), max_connections=connections
        )

    async def update_customer(self, pivotal_id: str, body: dict[str, Any]) -> int:
        return (await self.client.update_customer(pivotal_id, body)).status

    async def aclose(self) -> None:
        await self.client.aclose()


async def _measure(
    send: Callable[[str, dict[str, Any]], Awaitable[int]],
    customer: str,
    requests: int,
    in_flight: int,
) -> tuple[float, float]:
    """CPU µs per request and requests per second for `requests` PATCHes."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            status = await send(customer, {"status": "active", "mrr": i})
            if status != 200:
                raise RuntimeError(f"the sandbox answered HTTP {status}")

    await asyncio.gather(*(one(i) for i in range(in_flight * 2)))  # connections open, warm
    cpu, started = _cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    return 1e6 * (_cpu_seconds() - cpu) / requests, requests / elapsed


async def _run(url: str, args: argparse.Namespace) -> None:
    api = f"{url}/api/v1"
    async with PivotalClient(base_url=api, api_key=SecretStr(KEY)) as setup:
        created = await setup.create_customer(
            {"name": "Bench Co", "slug": "bench-co", "status": "onboarding"}, "bench-http-setup"
        )
        created.raise_for_status()
        customer = str(created.json()["id"])
    variants: dict[str, Callable[[], HttpcorePools | Aiohttp]] = {
        "httpx on httpcore (before)": lambda: HttpcorePools(api, args.in_flight),
        "httpx on aiohttp (daemon)": lambda: Aiohttp(api, args.in_flight),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, make in variants.items():
            client = make()
            try:
                cpu, rate = await _measure(
                    client.update_customer, customer, args.requests, args.in_flight
                )
            finally:
                await client.aclose()
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, rate)
    rounds = f"best of {args.rounds} rounds"
    print(f"{args.requests} PATCHes per round, {args.in_flight} in flight, {rounds}")
    print(f"{'engine':<28} {'CPU µs/request':>15} {'requests/s':>11}")
    for name, (cpu, rate) in best.items():
        print(f"{name:<28} {cpu:>15.0f} {rate:>11.0f}")
    (before_cpu, before_rate), (after_cpu, after_rate) = best.values()
    cpu_ratio, rate_ratio = after_cpu / before_cpu, after_rate / before_rate
    print(f"ratio aiohttp / httpcore: CPU {cpu_ratio:.2f}, requests/s {rate_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    with running_sandbox("--window-seconds", "10", "--key", f"{KEY}:1000000") as url:
        asyncio.run(_run(url, args))


if __name__ == "__main__":
    main()
