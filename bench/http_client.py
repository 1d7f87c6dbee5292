"""What one Pivotal request costs the daemon's CPU, by request path.

    python -m bench.http_client [--requests 3000] [--rounds 3] [--in-flight 64]

Sends customer PATCHes to the sandbox (a process of its own), `--in-flight` at a time, by three
paths:

1. `httpx.AsyncClient` on httpcore, split as the daemon used to split it (session 5): pools of
   4 connections, each request to the least busy (one pool of 64 walks all its connections on
   every request);
2. `httpx.AsyncClient` on the daemon's aiohttp engine (`daemon/aiohttp_transport.py`), one pool;
3. the daemon's `PivotalClient` as it is: an `httpx.Request` handed straight to that engine,
   without the client's per-request URL merging, cookie jar, auth and redirect layers.

The variants take turns in every round so machine noise hits them alike; the table gives the
best round of each. CPU is this process's own (user + system): the sandbox's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
from pydantic import SecretStr

from daemon.aiohttp_transport import AiohttpTransport
from daemon.pivotal import PivotalClient
from daemon.sandbox.testing import running_sandbox

KEY = "pivotal_live_bench_http"
POOL_CONNECTIONS = 4  # the former daemon's pools
HEADERS = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Variant(Protocol):
    async def update_customer(self, pivotal_id: str, body: dict[str, Any]) -> int: ...

    async def aclose(self) -> None: ...


class AsyncClients:
    """`httpx.AsyncClient`s as the daemon used them: a PATCH to the least busy one."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self.busy = [0] * len(clients)

    @classmethod
    def on_httpcore_pools(cls, api: str, connections: int) -> AsyncClients:
        limits = httpx.Limits(
            max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS
        )
        pools = max(1, connections // POOL_CONNECTIONS)
        return cls(
            [
                httpx.AsyncClient(base_url=f"{api}/", headers=HEADERS, limits=limits)
                for _ in range(pools)
            ]
        )

    @classmethod
    def on_aiohttp(cls, api: str, connections: int) -> AsyncClients:
        engine = AiohttpTransport(
            verify=ssl.create_default_context(), max_connections=connections, keepalive_expiry=4
        )
        return cls([httpx.AsyncClient(base_url=f"{api}/", headers=HEADERS, transport=engine)])

    async def update_customer(self, pivotal_id: str, body: dict[str, Any]) -> int:
        pool = min(range(len(self.clients)), key=self.busy.__getitem__)
        self.busy[pool] += 1
        try:
            content = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
            response = await self.clients[pool].patch(
                f"customers/{pivotal_id}",
                content=content,
                headers={"Content-Type": "application/json"},
            )
            return response.status_code
        finally:
            self.busy[pool] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class Daemon:
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
    variants: dict[str, Callable[[], Variant]] = {
        "AsyncClient on httpcore pools": lambda: AsyncClients.on_httpcore_pools(
            api, args.in_flight
        ),
        "AsyncClient on aiohttp": lambda: AsyncClients.on_aiohttp(api, args.in_flight),
        "PivotalClient (daemon)": lambda: Daemon(api, args.in_flight),
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
    print(f"{'request path':<31} {'CPU µs/request':>15} {'requests/s':>11} {'CPU ratio':>10}")
    first_cpu = next(iter(best.values()))[0]
    for name, (cpu, rate) in best.items():
        print(f"{name:<31} {cpu:>15.0f} {rate:>11.0f} {cpu / first_cpu:>10.2f}")


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
