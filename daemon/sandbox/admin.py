"""The admin API under /_sandbox/: inspect, reset, inject faults, manage keys and rules.

Not under /api/v1, never rate limited, no Pivotal auth; when the sandbox has an admin token,
every admin request needs `Authorization: Bearer TOKEN`. Errors use Pivotal's envelope too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from daemon.sandbox.config import KeySpec, default_limit
from daemon.sandbox.errors import ApiError, bad_request
from daemon.sandbox.faults import FaultSettings
from daemon.sandbox.runtime import Sandbox
from daemon.sandbox.state import KINDS

PREFIX = "/_sandbox"
AdminHandler = Callable[[Request], Awaitable[Any]]


def _json(value: object, status: int = 200) -> Response:
    return Response(json.dumps(value), status, media_type="application/json")


async def _payload(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("invalid_json", "Request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request("invalid_type", "Expected a JSON object")
    return value


class Admin:
    """Admin handlers over one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def wrap(self, handler: AdminHandler) -> Callable[[Request], Awaitable[Response]]:
        token = self.sandbox.config.admin_token

        async def endpoint(request: Request) -> Response:
            try:
                if token is not None and request.headers.get("authorization") != f"Bearer {token}":
                    raise ApiError(401, "invalid_admin_token", "Admin token missing or wrong")
                return _json(await handler(request))
            except ApiError as error:
                return Response(error.body(), error.status, media_type="application/json")

        return endpoint

    async def stats(self, request: Request) -> Any:
        sandbox = self.sandbox
        now = sandbox.clock.now()
        stats = sandbox.stats.as_json()
        keys = {}
        for key, state in sandbox.keys.items():
            counter = sandbox.stats.by_key.get(key) or Counter()
            keys[key] = {
                **state.as_json(now),
                "requests": counter.get("requests", 0),
                "rate_limited": counter.get("429", 0),
            }
        stats["keys"] = keys
        stats["faults_served"] = dict(sandbox.faults.served)
        stats["records"] = sandbox.store.counts()
        stats["duplicates"] = sandbox.store.duplicates()
        return stats

    async def records(self, request: Request) -> Any:
        kind = request.query_params.get("kind")
        workspace = request.query_params.get("workspace")
        result: dict[str, list[dict[str, Any]]] = {
            f"{name}s": [] for name in KINDS if kind in (None, name)
        }
        for slug, space in self.sandbox.store.workspaces.items():
            if workspace not in (None, slug):
                continue
            for name, records in space.records.items():
                if f"{name}s" in result:
                    result[f"{name}s"].extend(record.as_admin_json() for record in records.values())
        return result

    async def requests(self, request: Request) -> Any:
        log = self.sandbox.stats.log
        limit_text = request.query_params.get("limit", "")
        entries = list(log)[-int(limit_text) :] if limit_text.isdigit() else list(log)
        return {"requests": [entry.as_json() for entry in entries], "capacity": log.maxlen}

    async def clear_requests(self, request: Request) -> Any:
        self.sandbox.stats.clear()
        return {"cleared": True}

    async def reset(self, request: Request) -> Any:
        self.sandbox.reset()
        return {"reset": True}

    async def faults(self, request: Request) -> Any:
        sandbox = self.sandbox
        now = sandbox.clock.now()
        if request.method == "POST":
            sandbox.faults.set(FaultSettings.parse(await _payload(request), now))
        elif request.method == "DELETE":
            sandbox.faults.set(FaultSettings())
        return sandbox.faults.settings.as_json(now)

    async def keys(self, request: Request) -> Any:
        sandbox = self.sandbox
        if request.method == "POST":
            payload = await _payload(request)
            key = payload.get("key")
            if not isinstance(key, str):
                raise bad_request("missing_field", "key is required", "key")
            try:
                spec = KeySpec(
                    key=key,
                    limit=int(payload.get("limit") or default_limit(key)),
                    workspace=str(payload.get("workspace") or "default"),
                )
            except ValueError as exc:
                raise bad_request("invalid_key", str(exc), "key") from exc
            sandbox.add_key(spec)
        now = sandbox.clock.now()
        return {"keys": [state.as_json(now) for state in sandbox.keys.values()]}

    async def key_action(self, request: Request) -> Any:
        sandbox = self.sandbox
        state = sandbox.key(request.path_params["key"])
        action = request.path_params["action"]
        if action == "revoke":
            state.revoked = True
        elif action == "restore":
            state.revoked = False
        elif action == "limit":
            limit = (await _payload(request)).get("limit")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise bad_request("invalid_type", "limit is an integer ≥ 0", "limit")
            state.window.limit = limit
        elif action == "clear":
            state.window.clear()
        else:
            raise ApiError(404, "route_not_found", "No such key action")
        return state.as_json(sandbox.clock.now())

    async def rules(self, request: Request) -> Any:
        rules = self.sandbox.rules
        if request.method == "DELETE":
            rules.rejected.clear()
            rules.name_max_length = None
        elif request.method == "POST":
            payload = await _payload(request)
            kind = str(payload.get("kind", "customer"))
            if kind not in KINDS:
                raise bad_request("invalid_enum_value", "kind is customer|contact|onboarding")
            if "reject_field" in payload:
                values = payload.get("values")
                if values is not None and not isinstance(values, list):
                    raise bad_request("invalid_type", "values is a list", "values")
                rules.rejected[(kind, str(payload["reject_field"]))] = values
            if "relax_field" in payload:
                rules.rejected.pop((kind, str(payload["relax_field"])), None)
            if "name_max_length" in payload:
                limit = payload["name_max_length"]
                if limit is not None and (not isinstance(limit, int) or limit < 1):
                    raise bad_request("invalid_type", "name_max_length is an integer ≥ 1")
                rules.name_max_length = limit
        return rules.as_json()

    async def clock(self, request: Request) -> Any:
        clock = self.sandbox.clock
        if request.method == "POST":
            seconds = (await _payload(request)).get("advance_seconds", 0)
            if not isinstance(seconds, int | float) or seconds < 0:
                raise bad_request("invalid_type", "advance_seconds is a number ≥ 0")
            clock.advance(float(seconds))
        return {"now": clock.now(), "offset_seconds": clock.offset_seconds}


def routes(sandbox: Sandbox) -> list[BaseRoute]:
    admin = Admin(sandbox)
    wrap = admin.wrap
    return [
        Route(PREFIX + "/stats", wrap(admin.stats), methods=["GET"]),
        Route(PREFIX + "/records", wrap(admin.records), methods=["GET"]),
        Route(PREFIX + "/requests", wrap(admin.requests), methods=["GET"]),
        Route(PREFIX + "/requests", wrap(admin.clear_requests), methods=["DELETE"]),
        Route(PREFIX + "/reset", wrap(admin.reset), methods=["POST"]),
        Route(PREFIX + "/faults", wrap(admin.faults), methods=["GET", "POST", "DELETE"]),
        Route(PREFIX + "/keys", wrap(admin.keys), methods=["GET", "POST"]),
        Route(PREFIX + "/keys/{key}/{action}", wrap(admin.key_action), methods=["POST"]),
        Route(PREFIX + "/rules", wrap(admin.rules), methods=["GET", "POST", "DELETE"]),
        Route(PREFIX + "/clock", wrap(admin.clock), methods=["GET", "POST"]),
    ]
