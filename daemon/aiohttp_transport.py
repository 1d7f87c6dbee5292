"""An httpx transport that sends requests with aiohttp: httpx's API, a cheaper engine under it.

The daemon speaks httpx (`daemon/pivotal.py`); this room only moves bytes. httpx's own engine,
httpcore on anyio, costs about 0.8 ms of CPU per request on a small machine, most of it in
pure-Python HTTP/1.1 parsing, cancel scopes and pool bookkeeping. During a catch-up with
requests that was most of the daemon's CPU (docs/benchmarks.md, session 6). aiohttp parses in C
and keeps its pool in a dict: the same request costs about half as much under
`httpx.AsyncClient`, and a third as much handed straight to this transport, as the daemon does
(`python -m bench.http_client` measures the paths in one run).

What httpx users rely on is kept:

- failures are httpx's exceptions (`TimeoutException`, `TransportError` and their children), so
  callers map them as before. The name says what happened: a server that closed the
  connection without an answer is a `RemoteProtocolError`, as httpcore says, not a timeout;
- the connect, pool and read timeouts of the request are applied;
- the body is read here whole (the daemon never streams), and its content encoding is left to
  httpx to decode;
- nothing is retried. aiohttp resends a GET or DELETE once when a reused connection turns out
  closed; here that answer is the dispatcher's to give (a lost response may have been applied,
  and every request is counted against the quota), so the resend is switched off, as aiohttp's
  own test client does.

Proxies are not handled here: `daemon/pivotal.py` picks httpx's own transport when the
environment names an egress proxy for the API, and this one otherwise.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import httpx

# aiohttp's exceptions, most specific first, and the httpx exception each one becomes.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.ClientError, httpx.TransportError),
)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        for source, target in _ERRORS:
            if isinstance(exc, source):
                raise target(str(exc) or type(exc).__name__, request=request) from exc
        raise  # pragma: no cover - the last row catches every aiohttp.ClientError


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send each httpx request over a shared aiohttp connection pool."""

    def __init__(self, *, verify: ssl.SSLContext, max_connections: int, keepalive_expiry: float):
        self._verify = verify
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp binds its session to the running event loop.
        connector = aiohttp.TCPConnector(
            ssl=self._verify,
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            # No cookies (the API authenticates with a bearer token, and a cookie jar parses every
            # response), no environment: proxies are chosen before this transport.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        session._retry_connection = False  # see the module docstring: no silent resend
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open()
        timeouts = request.extensions.get("timeout", {})
        connect, pool = timeouts.get("connect"), timeouts.get("pool")
        timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's `connect` covers the wait for a free connection and the connecting.
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=timeouts.get("read"),
        )
        with _as_httpx_errors(request):
            async with self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                body = await response.read()
                headers = response.raw_headers
                status = response.status
                reason = response.reason
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if reason:
            extensions["reason_phrase"] = reason.encode("ascii", "replace")
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(body), extensions=extensions
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
