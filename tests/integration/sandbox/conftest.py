"""Integration tier: the same specification over loopback HTTP against a real sandbox process."""

from __future__ import annotations

import pytest

from tests.fixtures.sandbox import SandboxClient


@pytest.fixture
def api(sandbox_http: SandboxClient) -> SandboxClient:
    return sandbox_http
