"""The Starlette app: the request pipeline every API call goes through, and the route table.

Pipeline of an API request, in order (each step may answer instead of the handler):

    authenticate → storm 429 → window 429 → count → injected 5xx → injected drop
    → read body → idempotency → latency → handler → (drop after commit)
    → un-count a free 4xx → rate-limit headers → statistics

The hot path is plain dict and deque work: no middleware classes, no per-request logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from daemon.sandbox import admin, resources
from daemon.sandbox.clock import Clock, SystemClock
from daemon.sandbox.config import IDEMPOTENCY_KEY_MAX_BYTES, SandboxConfig
from daemon.sandbox.errors import ApiError, bad_request, conflict
from daemon.sandbox.ids import iso_ms
from daemon.sandbox.resources import Call, Handler, dumps
from daemon.sandbox.runtime import KeyState, Sandbox
from daemon.sandbox.state import IdempotencyEntry
from daemon.sandbox.stats import LoggedRequest

API = "/api/v1"
DROPPED_STATUS = 0  # how a dropped connection shows in statistics and the request log
_SEND_KEY = "sandbox.server_send"
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path."""

    endpoint: str  # route template for statistics and idempotency scope, e.g. "POST /customers"
    handler: Handler
    idempotent: bool = False  # honours Idempotency-Key (the three creates)


class SandboxStarlette(Starlette):
    """Starlette that remembers the server's own `send`, so a fault can abort the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_SEND_KEY] = send
        await super().__call__(scope, receive, send)


class _Unauthorized(ApiError):
    def __init__(self, code: str, message: str, key: KeyState | None = None) -> None:
        super().__init__(401, code, message)
        self.key = key


class _RateLimited(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429, "rate_limited", f"Rate limit exceeded. Retry after {retry_after} seconds."
        )
        self.retry_after = retry_after


class _Dropped(Exception):
    """The connection was aborted on purpose; there is no response to send."""


def authenticate(sandbox: Sandbox, header: str | None) -> KeyState:
    """The key of `Authorization: Bearer KEY` (scheme case-insensitive), or a 401."""
    if header is None:
        raise _Unauthorized("missing_api_key", "No API key provided")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Unauthorized(
            "invalid_authorization_header", "Use the header Authorization: Bearer <key>"
        )
    key = sandbox.keys.get(token)
    if key is None:
        raise _Unauthorized("invalid_api_key", "Invalid API key")
    if key.revoked:
        raise _Unauthorized("api_key_revoked", "This API key has been revoked", key)
    return key


async def _drop(scope: Scope) -> None:
    """Abort the TCP connection with no response (or fail the in-process transport)."""
    server_send = scope.get(_SEND_KEY)
    transport = getattr(getattr(server_send, "__self__", None), "transport", None)
    if transport is None:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    transport.abort()
    # Let the server see the connection lost before the endpoint returns, so it neither
    # complains about a missing response nor tries to write one.
    for _ in range(3):
        await asyncio.sleep(0)
    raise _Dropped


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise bad_request("body_too_large", f"Request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise bad_request("body_too_large", f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(slots=True, kw_only=True)
class _Exchange:
    """One API request on its way through the pipeline, and what is known about it so far."""

    request: Request
    operation: Operation
    now: float
    key: KeyState | None = None
    counted_at: float | None = None  # when it was counted in the key's window
    body: bytes = b""
    idempotency_key: str | None = None
    replayed: bool = False  # answered from the idempotency cache
    extra: dict[str, str] = field(default_factory=dict)  # extra response headers


class Pipeline:
    """Runs an operation for a request: auth, limits, faults, idempotency, handler, headers."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def __call__(self, request: Request, operation: Operation) -> Response:
        sandbox = self.sandbox
        exchange = _Exchange(request=request, operation=operation, now=sandbox.clock.now())
        try:
            status, content = await self._run(exchange)
        except _Dropped:
            self._log(exchange, DROPPED_STATUS)
            return Response(status_code=500)  # never sent: the connection is gone
        except _HtmlError as error:
            # A gateway's page: no JSON, no rate-limit headers, nothing counted as answered.
            self._log(exchange, error.status)
            page = _gateway_page(error.status, request, sandbox.faults.settings.echo_authorization)
            return Response(page, error.status, media_type="text/html")
        except ApiError as error:
            status, content = error.status, error.body(sandbox.config.error_codes)
            if sandbox.faults.settings.echo_authorization:
                content = _with_echo(content, request)
            if isinstance(error, _RateLimited):
                exchange.extra["retry-after"] = str(error.retry_after)
            elif isinstance(error, _Unauthorized):
                exchange.key = error.key
        key = exchange.key
        if exchange.counted_at is not None and key is not None:
            free_4xx = 400 <= status < 500 and not sandbox.config.count_4xx
            if free_4xx or (exchange.replayed and not sandbox.config.count_replays):
                key.window.uncount(exchange.counted_at)
        headers = self._limit_headers(key, status, exchange.extra)
        self._log(exchange, status)
        return Response(content, status, headers, _JSON)

    async def _run(self, exchange: _Exchange) -> tuple[int, bytes]:
        """The steps after the response bookkeeping is set up; raises ApiError to refuse."""
        sandbox, request, operation = self.sandbox, exchange.request, exchange.operation
        key = exchange.key = authenticate(sandbox, request.headers.get("authorization"))
        exchange.counted_at = self._admit(key, exchange.now)
        faults = sandbox.faults
        injecting = faults.settings.active and faults.applies(operation.endpoint)
        if injecting:
            error_status = faults.error_status()
            if error_status is not None:
                if faults.settings.html_errors:
                    raise _HtmlError(error_status)
                raise _injected_error(error_status)
            if not faults.settings.drop_after_commit and faults.drop():
                await _drop(request.scope)
        if request.method in ("POST", "PATCH"):
            exchange.body = await _read_body(request, sandbox.config.max_body_bytes)
        call = Call(
            sandbox=sandbox,
            key=key,
            workspace=sandbox.workspace_of(key),
            params=request.path_params,
            query=request.query_params,
            body=exchange.body,
            now=exchange.now,
        )
        if operation.idempotent:
            exchange.idempotency_key = request.headers.get("idempotency-key") or None
        if exchange.idempotency_key is not None:
            result = await self._idempotent(call, exchange)
        else:
            await self._latency(operation.endpoint)
            result = operation.handler(call)
        if injecting and faults.settings.drop_after_commit and faults.drop():
            await _drop(request.scope)
        return result

    def _admit(self, key: KeyState, now: float) -> float:
        """Count the request in its key's window, or raise the 429 (storm or limit)."""
        sandbox = self.sandbox
        faults = sandbox.faults
        retry_after = faults.storm(now) if faults.settings.storm_until > now else None
        if retry_after is None:
            retry_after = key.window.retry_after(now)
        if retry_after is not None:
            if sandbox.config.count_rejected_429:
                key.window.count(now)
            raise _RateLimited(retry_after)
        key.window.count(now)
        return now

    async def _latency(self, endpoint: str) -> None:
        faults = self.sandbox.faults
        if faults.settings.active and faults.applies(endpoint):
            delay = faults.latency_seconds()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _idempotent(self, call: Call, exchange: _Exchange) -> tuple[int, bytes]:
        """Run a create once per key: replay its success, refuse a reuse or a collision."""
        sandbox, operation = self.sandbox, exchange.operation
        idempotency_key = str(exchange.idempotency_key)
        if len(idempotency_key.encode("latin-1")) > IDEMPOTENCY_KEY_MAX_BYTES:
            raise bad_request(
                "too_big",
                f"Idempotency-Key must be at most {IDEMPOTENCY_KEY_MAX_BYTES} bytes",
                "Idempotency-Key",
            )
        store = sandbox.store.idempotency
        scope = (call.workspace.slug, operation.endpoint, idempotency_key)
        fingerprint = self._fingerprint(exchange.request.url.path, call.body)
        entry = store.get(scope)
        if (
            entry is not None
            and entry.stored_at + sandbox.config.idempotency_ttl_seconds <= call.now
        ):
            entry = None  # expired: the key counts as new
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise conflict(
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request body",
                )
            if entry.status is None:
                raise conflict(
                    "idempotency_request_in_progress",
                    "A request with this Idempotency-Key is still being processed",
                )
            exchange.replayed = True
            await self._latency(operation.endpoint)
            return entry.status, entry.body
        entry = store[scope] = IdempotencyEntry(fingerprint=fingerprint, stored_at=call.now)
        try:
            if sandbox.before_create is not None:
                await sandbox.before_create()
            await self._latency(operation.endpoint)
            status, content = operation.handler(call)
            entry.status, entry.body = status, content
            return status, content
        finally:
            if entry.status is None and store.get(scope) is entry:
                del store[scope]  # failures are not cached: a retry runs again

    def _fingerprint(self, path: str, body: bytes) -> bytes:
        if self.sandbox.config.idempotency_hash == "json":
            with contextlib.suppress(ValueError, RecursionError):
                body = json.dumps(json.loads(body), sort_keys=True).encode()
        return hashlib.sha256(path.encode() + b"\n" + body).digest()

    def _limit_headers(
        self, key: KeyState | None, status: int, extra: dict[str, str]
    ) -> dict[str, str]:
        if key is None:
            return extra
        now = self.sandbox.clock.now()
        state = key.window.state(now)
        headers = state.headers()
        if status == 429:
            headers["x-ratelimit-remaining"] = "0"
            retry_after = int(extra["retry-after"])
            headers["x-ratelimit-reset"] = str(max(state.reset_epoch, int(now) + retry_after))
        headers.update(extra)
        return headers

    def _log(self, exchange: _Exchange, status: int) -> None:
        scope = exchange.request.scope
        key = exchange.key
        entry = LoggedRequest(
            time=exchange.now,
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            endpoint=exchange.operation.endpoint,
            status=status,
            key_prefix=key.spec.prefix if key is not None else None,
            idempotency_key=exchange.idempotency_key,
            body=exchange.body,
        )
        self.sandbox.stats.record(entry, key.spec.key if key is not None else None)


class _HtmlError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _gateway_page(status: int, request: Request, echo: bool) -> bytes:
    quoted = ""
    if echo:
        quoted = f"<pre>Authorization: {request.headers.get('authorization', '')}</pre>"
    return (
        f"<html><head><title>{status} Service Unavailable</title></head><body>"
        f"<h1>{status} Service Unavailable</h1>{quoted}<hr>gateway</body></html>"
    ).encode()


def _with_echo(content: bytes, request: Request) -> bytes:
    document = json.loads(content)
    document["request"] = {"headers": {"authorization": request.headers.get("authorization")}}
    return dumps(document)


def _injected_error(status: int) -> ApiError:
    if status == 503:
        return ApiError(503, "service_unavailable", "The service is temporarily unavailable")
    return ApiError(500, "internal_error", "An unexpected error occurred")


# --- routes --------------------------------------------------------------------------------

# path → method → (operation template suffix, handler, idempotent)
_TABLE: dict[str, dict[str, tuple[Handler, bool]]] = {
    "/me": {"GET": (resources.get_me, False)},
    "/customers": {
        "GET": (resources.list_customers, False),
        "POST": (resources.create_customer, True),
    },
    "/customers/{id}": {
        "GET": (resources.get_customer, False),
        "PATCH": (resources.update_customer, False),
        "DELETE": (resources.delete_customer, False),
    },
    "/customers/{id}/contacts": {
        "GET": (resources.list_contacts, False),
        "POST": (resources.create_contact, True),
    },
    "/customers/{id}/onboardings": {"GET": (resources.list_customer_onboardings, False)},
    "/contacts/{id}": {
        "GET": (resources.get_contact, False),
        "PATCH": (resources.update_contact, False),
        "DELETE": (resources.delete_contact, False),
    },
    "/onboardings": {
        "GET": (resources.list_onboardings, False),
        "POST": (resources.create_onboarding, True),
    },
    "/onboardings/{id}": {
        "GET": (resources.get_onboarding, False),
        "PATCH": (resources.update_onboarding, False),
        "DELETE": (resources.delete_onboarding, False),
    },
}


def _template(path: str) -> str:
    return path.replace("/customers/{id}/", "/customers/{customerId}/")


def _any_method(route: Route) -> Route:
    """Let every method reach the endpoint, which answers unsupported ones in the envelope."""
    route.methods = None
    return route


def _method_not_allowed(config: SandboxConfig, allowed: list[str]) -> Operation:
    def handler(call: Call) -> tuple[int, bytes]:
        if config.unsupported_method_status == 404:
            raise ApiError(404, "route_not_found", "No such route")
        raise ApiError(405, "method_not_allowed", f"Allowed methods: {', '.join(allowed)}")

    return Operation(endpoint="", handler=handler)


def _api_route(pipeline: Pipeline, path: str, methods: Mapping[str, tuple[Handler, bool]]) -> Route:
    template = _template(path)
    operations = {
        method: Operation(f"{method} {template}", handler, idempotent)
        for method, (handler, idempotent) in methods.items()
    }
    fallback = _method_not_allowed(pipeline.sandbox.config, sorted(operations))

    async def endpoint(request: Request) -> Response:
        operation = operations.get(request.method)
        if operation is None:
            operation = Operation(f"{request.method} {template}", fallback.handler)
        return await pipeline(request, operation)

    return _any_method(Route(API + path, endpoint))


def _health(sandbox: Sandbox) -> Route:
    async def health(request: Request) -> Response:
        stamp = iso_ms(int(sandbox.clock.now() * 1000))
        return Response(dumps({"status": "ok", "timestamp": stamp}), 200, media_type=_JSON)

    return Route(API + "/health", health, methods=["GET"])


def _fallbacks(pipeline: Pipeline) -> list[BaseRoute]:
    unknown = Operation("", resources.unknown_route)

    async def unknown_api(request: Request) -> Response:
        operation = Operation(f"{request.method} (unknown)", unknown.handler)
        return await pipeline(request, operation)

    async def not_found(request: Request) -> Response:
        body = ApiError(404, "route_not_found", "No such route").body()
        return Response(body, 404, media_type=_JSON)

    return [
        _any_method(Route(API + "/{rest:path}", unknown_api)),
        _any_method(Route("/{rest:path}", not_found)),
    ]


def create_app(config: SandboxConfig, *, clock: Clock | None = None) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` is its `Sandbox`."""
    sandbox = Sandbox(config, clock or SystemClock())
    pipeline = Pipeline(sandbox)
    routes: list[BaseRoute] = [_health(sandbox)]
    routes += [_api_route(pipeline, path, methods) for path, methods in _TABLE.items()]
    routes += admin.routes(sandbox)
    routes += _fallbacks(pipeline)
    app = SandboxStarlette(routes=routes)
    app.state.sandbox = sandbox
    return app


def sandbox_of(app: Starlette) -> Sandbox:
    sandbox: Any = app.state.sandbox
    assert isinstance(sandbox, Sandbox)
    return sandbox
