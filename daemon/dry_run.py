"""Dry run: the whole pipeline, minus the sending.

`DryRunApi` stands where the Pivotal client stands and logs each request it would send
(method, path, body, idempotency key), answering as Pivotal would on success — with made-up ids
so that children of a planned customer are planned too. Nothing is paced (no request leaves),
nothing is written to Postgres and no offset is committed (the recorder and source see to that).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import structlog

from daemon.pivotal import ApiResponse

log = structlog.get_logger("pivotal_sync.dry_run")


class UnlimitedPacer:
    """A pacer that never waits: a dry run sends nothing, so it spends no quota."""

    class _Permit:
        def complete(self, status: int, headers: Mapping[str, str]) -> None:
            pass

        def failed(self, *, systemic: bool = True) -> None:
            pass

    async def acquire(self) -> _Permit:
        return self._Permit()

    def probe(self) -> _Permit:
        return self._Permit()

    def pause(self, reason: str) -> None:
        pass

    def resume(self, reason: str) -> None:
        pass

    @property
    def paused_reasons(self) -> frozenset[str]:
        return frozenset()


class DryRunApi:
    """Plans requests instead of sending them."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.planned: list[dict[str, Any]] = []

    def _plan(
        self,
        method: str,
        path: str,
        endpoint: str,
        body: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        status: int = 200,
    ) -> ApiResponse:
        request: dict[str, Any] = {"method": method, "path": f"/{path}"}
        if body is not None:
            request["body"] = dict(body)
        if key:
            request["idempotency_key"] = key
        self.planned.append(request)
        log.info("request_planned", **request)
        answer: dict[str, Any] = {"id": f"dryrun_{next(self._ids)}"}
        if method == "GET":
            answer = {"object": "list", "data": [], "has_more": False, "next_cursor": None}
        return ApiResponse(
            method=method,
            endpoint=endpoint,
            status=status,
            headers={},
            body=json.dumps(answer).encode(),
        )

    async def create_customer(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        return self._plan("POST", "customers", "customers", body, key=idempotency_key, status=201)

    async def update_customer(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return self._plan("PATCH", f"customers/{pivotal_id}", "customers", body)

    async def delete_customer(self, pivotal_id: str) -> ApiResponse:
        return self._plan("DELETE", f"customers/{pivotal_id}", "customers")

    async def find_customers_by_slug(self, slug: str) -> ApiResponse:
        return self._plan("GET", f"customers?slug={slug}", "customers")

    async def create_contact(
        self, customer_id: str, body: Mapping[str, Any], idempotency_key: str
    ) -> ApiResponse:
        path = f"customers/{customer_id}/contacts"
        return self._plan("POST", path, "contacts", body, key=idempotency_key, status=201)

    async def update_contact(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return self._plan("PATCH", f"contacts/{pivotal_id}", "contacts", body)

    async def delete_contact(self, pivotal_id: str) -> ApiResponse:
        return self._plan("DELETE", f"contacts/{pivotal_id}", "contacts")

    async def create_onboarding(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        return self._plan(
            "POST", "onboardings", "onboardings", body, key=idempotency_key, status=201
        )

    async def update_onboarding(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return self._plan("PATCH", f"onboardings/{pivotal_id}", "onboardings", body)

    async def delete_onboarding(self, pivotal_id: str) -> ApiResponse:
        return self._plan("DELETE", f"onboardings/{pivotal_id}", "onboardings")

    async def me(self) -> ApiResponse:
        return self._plan("GET", "me", "me")
