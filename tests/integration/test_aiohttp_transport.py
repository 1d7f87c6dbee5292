"""The daemon's HTTP engine (httpx on aiohttp) against a real server on a loopback socket.

The server is a few lines of asyncio that can misbehave on cue: answer, close without answering,
or answer too late. What the client must do in each case is what httpx's own engine did.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from daemon.aiohttp_transport import AiohttpTransport
from daemon.errors import TransientError
from daemon.pivotal import PivotalClient
from daemon.tls import client_context
from tests.fixtures.certificates import Certificates, make_certificates

KEY = "pivotal_live_transport_test_key"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """Answers request n with `behaviours[n]` (the last one repeats).

    "answer", "close" (without answering), "slow" (5 s late) or "garbled" (a body that is not
    the gzip its header says).
    """

    behaviours: list[str]
    answer_body: bytes = b'{"id":"cus_1","status":"active"}'
    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if h)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(method, path, headers, body))
                behaviour = self.behaviours[min(len(self.received), len(self.behaviours)) - 1]
                if behaviour == "close":
                    return
                if behaviour == "slow":
                    await asyncio.sleep(5)
                payload = gzip.compress(self.answer_body)
                if behaviour == "garbled":  # says gzip, is not
                    payload = self.answer_body
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Encoding: gzip\r\nX-RateLimit-Remaining: 41\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: Server, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://localhost:{port}/api/v1"
    try:
        yield server
    finally:
        listener.close()


def pivotal(
    url: str, *, verify: ssl.SSLContext | None = None, timeout: float = 5.0
) -> PivotalClient:
    return PivotalClient(
        base_url=url, api_key=SecretStr(KEY), verify=verify, timeout_seconds=timeout
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(Path(tmp_path_factory.mktemp("certificates")))


def api_context(ca_file: Path) -> ssl.SSLContext:
    return client_context(
        ca_file=ca_file, ca_variable="PIVOTAL_SYNC_API_CA_FILE", replace_roots=False
    )


async def test_a_request_arrives_as_httpx_built_it_and_the_answer_comes_back_decoded(
    certificates: Certificates,
) -> None:
    context = api_context(certificates.ca_file)
    async with (
        serving(Server(["answer"]), certificates.server_context()) as server,
        pivotal(server.url, verify=context) as client,
    ):
        response = await client.update_customer("cus_1", {"status": "active"})
    assert response.status == 200
    assert response.json() == {"id": "cus_1", "status": "active"}
    assert response.headers["x-ratelimit-remaining"] == "41"
    (request,) = server.received
    assert (request.method, request.path) == ("PATCH", "/api/v1/customers/cus_1")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "pivotal-sync/0.1"
    assert json.loads(request.body) == {"status": "active"}


async def test_a_certificate_from_another_ca_is_refused_before_anything_is_sent(
    certificates: Certificates,
) -> None:
    context = api_context(certificates.wrong_ca_file)
    async with (
        serving(Server(["answer"]), certificates.server_context()) as server,
        pivotal(server.url, verify=context) as client,
    ):
        with pytest.raises(TransientError, match=r"^GET me: ConnectError$"):
            await client.me()
    assert server.received == []


async def test_a_connection_closed_without_an_answer_is_not_resent_even_for_a_delete() -> None:
    # The first request opens a keep-alive connection; the DELETE reuses it and the server
    # closes it unanswered. aiohttp would resend an idempotent method here on its own; the
    # dispatcher must decide instead (the delete may have been applied, and quota was spent).
    async with (
        serving(Server(["answer", "close", "answer"])) as server,
        pivotal(server.url) as client,
    ):
        await client.me()
        with pytest.raises(TransientError) as raised:
            await client.delete_customer("cus_1")
        after = await client.me()
    assert str(raised.value) == "DELETE customers: RemoteProtocolError"
    assert [r.method for r in server.received] == ["GET", "DELETE", "GET"]
    assert after.status == 200


async def test_an_answer_later_than_the_timeout_is_a_read_timeout() -> None:
    async with serving(Server(["slow"])) as server, pivotal(server.url, timeout=0.3) as client:
        with pytest.raises(TransientError, match=r"^GET me: timed out \(ReadTimeout\)$"):
            await client.me()


async def test_a_body_that_does_not_decode_is_a_transient_error() -> None:
    async with serving(Server(["garbled"])) as server, pivotal(server.url) as client:
        with pytest.raises(TransientError, match=r"^GET me: DecodingError$"):
            await client.me()


async def test_nothing_listening_is_a_connect_error() -> None:
    async with serving(Server(["answer"])) as server:
        url = server.url
    async with pivotal(url) as client:
        with pytest.raises(TransientError, match=r"^GET me: ConnectError$"):
            await client.me()


@pytest.mark.parametrize(
    ("behaviour", "error"), [("close", httpx.RemoteProtocolError), ("slow", httpx.ReadTimeout)]
)
async def test_failures_reach_httpx_callers_as_httpx_exceptions_naming_no_secret(
    behaviour: str, error: type[Exception]
) -> None:
    transport = AiohttpTransport(
        verify=ssl.create_default_context(), max_connections=4, keepalive_expiry=4.0
    )
    async with (
        serving(Server([behaviour])) as server,
        httpx.AsyncClient(transport=transport, timeout=0.3) as client,
    ):
        with pytest.raises(error) as raised:
            await client.get(server.url + "/me", headers={"Authorization": f"Bearer {KEY}"})
    assert KEY not in str(raised.value)
    assert KEY not in repr(raised.value)


async def test_a_url_behind_an_egress_proxy_from_the_environment_goes_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx routes proxied URLs to a transport of its own: the aiohttp engine must not bypass
    # HTTP(S)_PROXY. The "proxy" here answers itself, which shows what reached it.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with serving(Server(["answer"])) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/api/v1"))
        async with pivotal("http://pivotal.invalid/api/v1") as client:
            response = await client.update_customer("cus_1", {"status": "active"})
    assert response.status == 200
    (request,) = proxy.received
    assert (request.method, request.path) == (
        "PATCH",
        "http://pivotal.invalid/api/v1/customers/cus_1",
    )
    assert request.headers["authorization"] == f"Bearer {KEY}"


async def test_a_host_in_no_proxy_is_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with serving(Server(["answer"])) as proxy, serving(Server(["answer"])) as server:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/api/v1"))
        monkeypatch.setenv("NO_PROXY", "localhost")
        async with pivotal(server.url) as client:
            await client.me()
    assert proxy.received == []
    assert [(r.method, r.path) for r in server.received] == [("GET", "/api/v1/me")]
