"""The baseline: what Pivotal's bulk guide (`seed/bulk-operations.md`) does, in asyncio + httpx.

Exactly the guide's script, translated: a concurrency limit of 4 over all records; per record one
`POST /customers` with `Idempotency-Key: bulk-import-{external_id}`; after every response, a 1 s
pause when `X-RateLimit-Remaining` < 5 ("throttling against X-RateLimit-Remaining"); on a 429,
sleep `Retry-After` (default 5) and retry; on a 5xx, retry ("add retries on transient 5xx too" —
after 1 s, at most 10 attempts); `409 slug_taken` counts as done; any other failure (e.g. a 401)
is counted as an error and the record is skipped, as the guide's script does.

Used by `bench/ratelimit_e2e.py`, which feeds it the same events it publishes for the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from devtools.sample_stream import Message

CONCURRENCY = 4
LOW_REMAINING = 5
LOW_REMAINING_PAUSE_SECONDS = 1.0
DEFAULT_RETRY_AFTER_SECONDS = 5.0
SERVER_ERROR_RETRY_SECONDS = 1.0
SERVER_ERROR_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class SourceCustomer:
    external_id: str
    name: str
    slug: str
    domain: str


@dataclass
class BaselineResult:
    done: int = 0
    errors: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)


def customers_from(messages: Iterable[Message]) -> list[SourceCustomer]:
    """The `customer.created` events of a published stream, as the guide's CSV rows."""
    customers = []
    for message in messages:
        if message.value is None:
            continue
        event = json.loads(message.value)
        if event.get("type") != "customer.created":
            continue
        data = event["data"]
        customers.append(
            SourceCustomer(
                external_id=str(event["subject"]),
                name=str(data["name"]),
                slug=str(data["slug"]),
                domain=str(data["domain"]),
            )
        )
    return customers


def _number(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


async def _import_one(
    client: httpx.AsyncClient, customer: SourceCustomer, result: BaselineResult
) -> None:
    body = {
        "name": customer.name,
        "slug": customer.slug,
        "domain": customer.domain,
        "status": "onboarding",
        "metadata": {"external_id": customer.external_id},
    }
    headers = {"Idempotency-Key": f"bulk-import-{customer.external_id}"}
    server_errors = 0
    while True:
        try:
            response = await client.post("/customers", json=body, headers=headers)
        except httpx.TransportError:
            server_errors += 1
            if server_errors >= SERVER_ERROR_ATTEMPTS:
                result.errors += 1
                result.error_codes["transport"] += 1
                return
            await asyncio.sleep(SERVER_ERROR_RETRY_SECONDS)
            continue
        result.requests += 1
        result.statuses[response.status_code] += 1
        remaining = _number(response.headers.get("X-RateLimit-Remaining"), 100)
        if remaining < LOW_REMAINING:
            await asyncio.sleep(LOW_REMAINING_PAUSE_SECONDS)
        if response.status_code == 429:
            retry_after = _number(response.headers.get("Retry-After"), DEFAULT_RETRY_AFTER_SECONDS)
            await asyncio.sleep(retry_after)
            continue
        if response.status_code >= 500:
            server_errors += 1
            if server_errors < SERVER_ERROR_ATTEMPTS:
                await asyncio.sleep(SERVER_ERROR_RETRY_SECONDS)
                continue
        payload: Any = None
        with contextlib.suppress(ValueError):
            payload = response.json()
        code = payload.get("error", {}).get("code") if isinstance(payload, dict) else None
        if response.is_success or code == "slug_taken":
            result.done += 1
        else:
            result.errors += 1
            result.error_codes[str(code or response.status_code)] += 1
        return


async def run(
    api_url: str,
    api_key: str,
    customers: Sequence[SourceCustomer],
    *,
    concurrency: int = CONCURRENCY,
    request_timeout: float = 30.0,
) -> BaselineResult:
    """Import `customers` the guide's way; returns what happened."""
    result = BaselineResult()
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=api_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=request_timeout,
        limits=httpx.Limits(max_connections=concurrency),
    ) as client:

        async def limited(customer: SourceCustomer) -> None:
            async with limit:
                await _import_one(client, customer, result)

        await asyncio.gather(*(limited(c) for c in customers))
    return result
