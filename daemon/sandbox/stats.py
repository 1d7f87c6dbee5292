"""What the sandbox saw: counters by method, endpoint and status, and a bounded request log.

Both are written on every request, so they are plain dict increments and one deque append of a
tuple; turning them into JSON happens only when the admin API asks.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from daemon.sandbox.ids import iso_ms


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the request log keeps it (bodies decoded only when read)."""

    time: float
    method: str
    path: str
    query: str
    endpoint: str
    status: int
    key_prefix: str | None
    idempotency_key: str | None
    body: bytes

    def as_json(self) -> dict[str, Any]:
        body: Any = None
        if self.body:
            try:
                body = json.loads(self.body)
            except (ValueError, RecursionError):
                body = self.body[:2000].decode("utf-8", "replace")
        return {
            "time": iso_ms(int(self.time * 1000)),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "endpoint": self.endpoint,
            "status": self.status,
            "key_prefix": self.key_prefix,
            "idempotency_key": self.idempotency_key,
            "body": body,
        }


class Stats:
    """Request counters and the request log."""

    def __init__(self, log_size: int) -> None:
        self.by_route: Counter[tuple[str, str, int]] = Counter()
        self.by_key: dict[str, Counter[str]] = {}
        self.log: deque[LoggedRequest] = deque(maxlen=log_size)

    def record(self, entry: LoggedRequest, key: str | None) -> None:
        self.by_route[(entry.method, entry.endpoint, entry.status)] += 1
        if key is not None:
            counter = self.by_key.get(key)
            if counter is None:
                counter = self.by_key[key] = Counter()
            counter["requests"] += 1
            counter[str(entry.status)] += 1
        self.log.append(entry)

    def clear(self) -> None:
        self.by_route.clear()
        self.by_key.clear()
        self.log.clear()

    def as_json(self) -> dict[str, Any]:
        by_method: Counter[str] = Counter()
        by_endpoint: Counter[str] = Counter()
        by_status: Counter[str] = Counter()
        by_endpoint_status: dict[str, dict[str, int]] = {}
        for (method, endpoint, status), count in self.by_route.items():
            by_method[method] += count
            by_endpoint[endpoint] += count
            by_status[str(status)] += count
            statuses = by_endpoint_status.setdefault(endpoint, {})
            statuses[str(status)] = statuses.get(str(status), 0) + count
        return {
            "requests_total": sum(by_method.values()),
            "rate_limited_total": by_status.get("429", 0),
            "by_method": dict(by_method),
            "by_endpoint": dict(by_endpoint),
            "by_status": dict(by_status),
            "by_endpoint_status": by_endpoint_status,
        }
