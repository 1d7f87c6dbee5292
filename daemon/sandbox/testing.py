"""Test doubles and helpers that ship with the sandbox (used by tests, the demo and benchmarks).

ManualClock        a clock that only moves when told to
SandboxAdmin       a typed httpx client for /_sandbox/ (sync)
AsyncSandboxAdmin  the same over an httpx.AsyncClient (e.g. in-process via ASGITransport)
running_sandbox    `pivotal-sync sandbox` in a subprocess, yielding its base URL
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import httpx

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 5.0
LISTENING = "sandbox listening on "


class ManualClock:
    """Wall time that only changes through `advance` (or `set`)."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock cannot go backwards")
        self._now += seconds


def _fault_payload(**settings: Any) -> dict[str, Any]:
    return {name: value for name, value in settings.items() if value is not None}


class SandboxAdmin:
    """The admin API of a sandbox at `base_url` (synchronous)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(
            base_url=f"{base_url}/_sandbox", headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SandboxAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = self.client.request(method, path, json=payload)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def records(self, kind: str | None = None) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = self._call(
            "GET", "/records" + (f"?kind={kind}" if kind else "")
        )
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/requests")["requests"]
        return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """e.g. set_faults(error_rate=0.2, latency_ms=50, storm={"retry_after": 5, ...})."""
        result: dict[str, Any] = self._call("POST", "/faults", _fault_payload(**settings))
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/faults")
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def add_key(self, key: str, *, limit: int | None = None, workspace: str | None = None) -> None:
        self._call("POST", "/keys", _fault_payload(key=key, limit=limit, workspace=workspace))

    def revoke(self, key: str) -> None:
        self._call("POST", f"/keys/{key}/revoke")

    def restore(self, key: str) -> None:
        self._call("POST", f"/keys/{key}/restore")

    def set_limit(self, key: str, limit: int) -> None:
        self._call("POST", f"/keys/{key}/limit", {"limit": limit})

    def set_rule(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/rules", payload)
        return result

    def clear_rules(self) -> None:
        self._call("DELETE", "/rules")

    def advance_clock(self, seconds: float) -> None:
        self._call("POST", "/clock", {"advance_seconds": seconds})


class AsyncSandboxAdmin:
    """The admin API over an existing `httpx.AsyncClient` whose base URL is the sandbox."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = await self.client.request(method, f"/_sandbox{path}", json=payload)
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/stats")
        return result

    async def records(self) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = await self._call("GET", "/records")
        return result

    async def set_faults(self, **settings: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/faults", _fault_payload(**settings))
        return result

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def revoke(self, key: str) -> None:
        await self._call("POST", f"/keys/{key}/revoke")

    async def restore(self, key: str) -> None:
        await self._call("POST", f"/keys/{key}/restore")

    async def set_limit(self, key: str, limit: int) -> None:
        await self._call("POST", f"/keys/{key}/limit", {"limit": limit})

    async def reset(self) -> None:
        await self._call("POST", "/reset")


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def running_sandbox(*args: str, timeout: float = START_TIMEOUT_SECONDS) -> Iterator[str]:
    """Run `pivotal-sync sandbox --port 0 ARGS` and yield its base URL (API at `{url}/api/v1`)."""
    command = [sys.executable, "-m", "daemon.cli", "sandbox", "--port", "0", *args]
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        assert process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(LISTENING):
            raise RuntimeError(f"the sandbox did not start: {line!r} (exit {process.poll()})")
        yield line[len(LISTENING) :].strip()
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
