"""The fault proxy does to real sockets what each fault says, switched while traffic flows."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from devtools.fault_proxy import Fault, FaultProxy

RESPONSE = b"x" * 100_000


class Upstream:
    """A loopback server that answers every line with RESPONSE (a dependency stand-in)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(1024):
                    conn.sendall(RESPONSE)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    upstream = Upstream()
    with FaultProxy.running(upstream.address) as running:
        yield running
    upstream.close()


async def ask(proxy: FaultProxy, timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", proxy.port), timeout
    )
    try:
        writer.write(b"hello\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(RESPONSE)), timeout)
    finally:
        writer.close()


async def test_without_a_fault_bytes_flow_both_ways(proxy: FaultProxy) -> None:
    """NONE is a plain proxy."""
    assert await ask(proxy) == RESPONSE
    assert proxy.stats.accepted == 1


async def test_refuse_closes_the_port_and_heal_opens_it_on_the_same_number(
    proxy: FaultProxy,
) -> None:
    """REFUSE: connect() fails; after heal the same address answers again."""
    proxy.set(Fault.REFUSE)
    with pytest.raises(ConnectionRefusedError):
        await ask(proxy)
    proxy.heal()
    assert await ask(proxy) == RESPONSE


async def test_reset_answers_a_connection_with_a_reset(proxy: FaultProxy) -> None:
    """RESET: the connection opens and is reset before any byte comes back."""
    proxy.set(Fault.RESET)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await ask(proxy)


async def test_blackhole_holds_bytes_until_healed(proxy: FaultProxy) -> None:
    """BLACKHOLE: nothing answers; once healed, the held request is answered."""
    proxy.set(Fault.BLACKHOLE)
    pending = asyncio.create_task(ask(proxy, timeout=10.0))
    await asyncio.sleep(0.5)
    assert not pending.done()
    proxy.heal()
    assert await pending == RESPONSE


async def test_cut_stops_a_response_part_way(proxy: FaultProxy) -> None:
    """CUT: the client gets the first bytes of the response, then a reset."""
    proxy.set(Fault.CUT, cut_after_bytes=1000)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)) as caught:
        await ask(proxy)
    if isinstance(caught.value, asyncio.IncompleteReadError):
        assert len(caught.value.partial) == 1000


async def test_slow_delays_every_chunk(proxy: FaultProxy) -> None:
    """SLOW: a round trip takes at least the delay."""
    proxy.set(Fault.SLOW, delay_seconds=0.3)
    started = time.monotonic()
    assert await ask(proxy) == RESPONSE
    assert time.monotonic() - started >= 0.3
