"""`pivotal-sync sandbox` as a process: the listening line, SIGTERM, the admin client."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from daemon.sandbox.testing import SandboxAdmin
from tests.fixtures.sandbox import LIVE_KEY, auth


def test_the_server_prints_its_url_and_exits_0_on_sigterm() -> None:
    command = [sys.executable, "-m", "daemon.cli", "sandbox", "--port", "0", "--key", "pivotal_a"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert httpx.get(f"{url}/api/v1/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0


def test_sandbox_admin_drives_a_real_server(sandbox_url: str, sandbox_admin: SandboxAdmin) -> None:
    httpx.post(f"{sandbox_url}/api/v1/customers", headers=auth(), json={"name": "A"})
    sandbox_admin.set_limit(LIVE_KEY, 1)
    assert httpx.get(f"{sandbox_url}/api/v1/me", headers=auth()).status_code == 429
    stats = sandbox_admin.stats()
    assert stats["by_endpoint_status"]["POST /customers"] == {"201": 1}
    assert len(sandbox_admin.records()["customers"]) == 1
    sandbox_admin.reset()
    assert sandbox_admin.records()["customers"] == []
