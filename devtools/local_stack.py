"""The whole local stack, for the demo, the end-to-end tests and the benchmarks.

`DaemonProcess` runs the real `pivotal-sync run` as a child process configured only by its
environment — exactly as Kubernetes runs it — and reads its `/metrics`. `committed_offsets`
asks the broker what the consumer group committed. Nothing here is a test double: these drive
the real daemon against the real stand-ins (`standins`, `sandbox`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx

from daemon.kafka_clients import KafkaClients
from daemon.tools import status
from devtools.local_services import Broker, free_port

STOP_TIMEOUT_SECONDS = 30.0
READY_TIMEOUT_SECONDS = 60.0


class DaemonProcess:
    """One `pivotal-sync run` child process."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        args: tuple[str, ...] = (),
        executable: Sequence[str] = (sys.executable, "-m", "daemon.cli"),
    ) -> None:
        self.port = int(env.get("PIVOTAL_SYNC_HTTP_PORT") or free_port())
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.env = {
            **os.environ,
            "PIVOTAL_SYNC_LOG_FORMAT": "json",
            **env,
            "PIVOTAL_SYNC_HTTP_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [*executable, "run", *args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self, *names: str) -> dict[str, float]:
        """Every sample of /metrics as `name{label="v",...}` → value (empty if unreachable);
        with `names` (sample names, e.g. `..._total`), only those samples (`?name[]=`, cheaper
        for the daemon to serve)."""
        try:
            params = {"name[]": list(names)}
            text = httpx.get(f"{self.url}/metrics", params=params, timeout=5).text
        except httpx.HTTPError:
            return {}
        return status.parse_samples(text)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, rest = key.partition("{")
            if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def readyz(self) -> tuple[int, str]:
        try:
            response = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.HTTPError as exc:
            return 0, type(exc).__name__
        return response.status_code, response.text

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"daemon exited with {self.process.returncode}: {self.tail()}")
            if self.readyz()[0] == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"daemon not ready after {timeout} s: {self.readyz()} {self.tail()}")

    def finished(self) -> float:
        return self.total("pivotal_sync_events_finished_total")

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, wait for the drain; SIGKILL only if it overruns. Returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the crash the guarantees are written for."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def broker_settings(broker: Broker) -> dict[str, str]:
    """The consumer settings a daemon needs for `broker` (fast group joins on tansu)."""
    return {f"KAFKA_{name.upper()}": str(value) for name, value in broker.group_timeouts.items()}


def daemon_env(
    *,
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    database_url: str,
    api_url: str,
    api_key: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of a daemon pointed at the local stack (extra: PIVOTAL_SYNC_* names
    without the prefix, e.g. DRAIN_TIMEOUT_SECONDS="5")."""
    env = {
        "PIVOTAL_API_KEY": api_key,
        "PIVOTAL_SYNC_API_URL": api_url,
        "PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "PIVOTAL_SYNC_KAFKA_TOPIC": topic,
        "PIVOTAL_SYNC_KAFKA_GROUP_ID": group_id,
        "PIVOTAL_SYNC_DATABASE_URL": database_url,
    }
    env.update({f"PIVOTAL_SYNC_{name}": value for name, value in extra.items()})
    return env


async def committed_offsets(
    bootstrap_servers: str, group_id: str, topic: str, partitions: int
) -> dict[int, int]:
    """What the group committed, per partition (-1: nothing yet)."""
    kafka = KafkaClients.plaintext(bootstrap_servers)
    return await status.committed_offsets(kafka, group_id, topic, range(partitions))
