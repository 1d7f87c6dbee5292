"""The Pivotal HTTP client: one method per endpoint, errors mapped, no retry loop.

Retries, pacing and dead-lettering belong to the dispatcher and the rate limiter; this room only
speaks HTTP. Every call returns an `ApiResponse` whatever the status (the limiter needs the
headers of failures too); `raise_for_status` maps a failure onto the error tree. Network errors
and timeouts raise `TransientError` directly, since there is no response to return.

The API key lives only inside an `httpx.Headers`, which masks it in reprs.

Requests are `httpx.Request`s handed straight to a transport: aiohttp as the engine
(`daemon/aiohttp_transport.py`), or httpx's own behind an egress proxy and in tests. The client
talks to one origin with fixed headers, never follows redirects and keeps no cookies, so
`httpx.AsyncClient`'s per-request layers (URL merging, cookie jar, auth and redirect flows) would
only cost CPU: about a third of a request's, and httpcore under them more than half of the rest
(`python -m bench.http_client` measures the three paths). The former httpcore engine also had
to be split into pools of 4 connections, each pool walking all its connections on every request
(encode/httpcore#1035); aiohttp's pool does not, so one holds every connection.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from daemon.aiohttp_transport import AiohttpTransport
from daemon.backoff import parse_retry_after
from daemon.errors import (
    AuthError,
    InFlightConflictError,
    PermanentError,
    PivotalError,
    RateLimitedError,
    TransientError,
)

USER_AGENT = "pivotal-sync/0.1"
MAX_CONNECTIONS = 64
# Below the common 5 s server-side keep-alive (uvicorn, many proxies): reusing a connection the
# server is closing at that moment fails the request with a ReadError for nothing.
KEEPALIVE_EXPIRY_SECONDS = 4.0
# Idempotency in-flight collision: Pivotal says retry "shortly"; the dispatcher waits this long.
IN_FLIGHT_CONFLICT_CODE = "idempotency_request_in_progress"
BODY_EXCERPT_BYTES = 2000


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """What Pivotal answered: status, headers and the raw body."""

    method: str
    endpoint: str  # bounded label: customers, contacts, onboardings, me
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str:
        data = self.json()
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return str(data["error"].get("code", ""))
        return ""

    def body_excerpt(self) -> str:
        return self.body[:BODY_EXCERPT_BYTES].decode("utf-8", "replace")

    def raise_for_status(self) -> None:
        """Map a non-2xx answer onto the error tree (see errors.py)."""
        if self.ok:
            return
        code, body = self.error_code, self.body_excerpt()
        message = f"{self.method} {self.endpoint}: HTTP {self.status} {code}".strip()
        error: PivotalError
        if self.status == 429:
            retry_after = parse_retry_after(self.headers.get("retry-after"), wall_now=time.time())
            error = RateLimitedError(message, retry_after=retry_after, body=body)
        elif self.status in (401, 403):
            # 403 is reserved by Pivotal and never sent today; a refusal of the key's rights
            # is systemic like a revoked key, so it pauses rather than dead-letters the stream.
            error = AuthError(message, status=self.status, code=code, body=body)
        elif self.status == 409 and code == IN_FLIGHT_CONFLICT_CODE:
            error = InFlightConflictError(message, status=409, code=code, body=body)
        elif self.status >= 500 or self.status == 408:
            error = TransientError(message, status=self.status, code=code, body=body)
        else:
            error = PermanentError(message, status=self.status, code=code, body=body)
        raise error


class PivotalClient:
    """Async client for Pivotal's REST API (base URL ends in /api/v1)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: SecretStr,
        timeout_seconds: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        max_connections = max(1, max_connections)
        self._base_url = base_url.rstrip("/") + "/"
        # httpx.Headers masks the Authorization value in its repr.
        self._headers = httpx.Headers(
            {
                "Authorization": f"Bearer {api_key.get_secret_value()}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate",
            }
        )
        self._extensions = {"timeout": httpx.Timeout(timeout_seconds).as_dict()}
        self._transport = transport or _transport_for(
            self._base_url,
            # Always verified: the default roots, or these plus PIVOTAL_SYNC_API_CA_FILE
            # (SSL_CERT_FILE and SSL_CERT_DIR are honoured, as httpx does).
            verify if verify is not None else httpx.create_ssl_context(trust_env=True),
            max_connections,
        )

    def __repr__(self) -> str:
        return f"PivotalClient(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> PivotalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> ApiResponse:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        request = httpx.Request(
            method,
            self._base_url + path.lstrip("/"),
            params=params,
            headers=self._headers,
            content=content,
            extensions=self._extensions,
        )
        request.headers.update(headers)
        try:
            response = await self._transport.handle_async_request(request)
            await response.aread()
        except httpx.TimeoutException as exc:
            raise TransientError(f"{method} {endpoint}: timed out ({type(exc).__name__})") from None
        except httpx.RequestError as exc:  # the network, or a body that does not decode
            raise TransientError(f"{method} {endpoint}: {type(exc).__name__}") from None
        return ApiResponse(
            method=method,
            endpoint=endpoint,
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=response.content,
        )

    # -- customers -------------------------------------------------------------------------
    async def create_customer(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        return await self.request(
            "POST", "customers", "customers", body=body, idempotency_key=idempotency_key
        )

    async def update_customer(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return await self.request("PATCH", f"customers/{pivotal_id}", "customers", body=body)

    async def delete_customer(self, pivotal_id: str) -> ApiResponse:
        return await self.request("DELETE", f"customers/{pivotal_id}", "customers")

    async def find_customers_by_slug(self, slug: str) -> ApiResponse:
        return await self.request("GET", "customers", "customers", params={"slug": slug})

    # -- contacts --------------------------------------------------------------------------
    async def create_contact(
        self, customer_id: str, body: Mapping[str, Any], idempotency_key: str
    ) -> ApiResponse:
        return await self.request(
            "POST",
            f"customers/{customer_id}/contacts",
            "contacts",
            body=body,
            idempotency_key=idempotency_key,
        )

    async def update_contact(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return await self.request("PATCH", f"contacts/{pivotal_id}", "contacts", body=body)

    async def delete_contact(self, pivotal_id: str) -> ApiResponse:
        return await self.request("DELETE", f"contacts/{pivotal_id}", "contacts")

    # -- onboardings -----------------------------------------------------------------------
    async def create_onboarding(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        return await self.request(
            "POST", "onboardings", "onboardings", body=body, idempotency_key=idempotency_key
        )

    async def update_onboarding(self, pivotal_id: str, body: Mapping[str, Any]) -> ApiResponse:
        return await self.request("PATCH", f"onboardings/{pivotal_id}", "onboardings", body=body)

    async def delete_onboarding(self, pivotal_id: str) -> ApiResponse:
        return await self.request("DELETE", f"onboardings/{pivotal_id}", "onboardings")

    # -- meta ------------------------------------------------------------------------------
    async def me(self) -> ApiResponse:
        """The cheapest authenticated call: the auth probe."""
        return await self.request("GET", "me", "me")


def _transport_for(
    base_url: str, verify: ssl.SSLContext, max_connections: int
) -> httpx.AsyncBaseTransport:
    """aiohttp for a direct connection; httpx's own transport through an egress proxy.

    The proxy is the one the environment names for the API's URL (HTTPS_PROXY, HTTP_PROXY or
    ALL_PROXY, unless NO_PROXY lists the host), read once: the client only ever talks to
    that one origin.
    """
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.host):
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        )
        return httpx.AsyncHTTPTransport(verify=verify, limits=limits, proxy=proxy)
    return AiohttpTransport(
        verify=verify, max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS
    )
