"""Unit tier: the sandbox in process over ASGITransport; time moves only by ManualClock."""

from __future__ import annotations

import pytest

from tests.fixtures.sandbox import SandboxApp, SandboxClient


@pytest.fixture
def api(sandbox_app: SandboxApp) -> SandboxClient:
    return sandbox_app.api
