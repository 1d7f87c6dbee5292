"""The image's install steps, proven without Docker: the wheel plus the locked dependencies in
a fresh virtual environment, exactly what the Dockerfile's builder stage installs, runs the
daemon end to end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.sample_stream import StreamSpec, generate
from tests.e2e.conftest import ScenarioFactory

ROOT = Path(__file__).resolve().parents[2]


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        # `make test` installs uv into .tools/ first, so this only happens outside it.
        pytest.fail("uv is needed to build the wheel: run the tests with `make test`")
    return found


def run(*command: str) -> None:
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the built wheel and the locked runtime dependencies only."""
    work = tmp_path_factory.mktemp("wheel")
    requirements, venv = work / "requirements.txt", work / "venv"
    run(uv(), "build", "--wheel", "--out-dir", str(work))
    run(uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "-o", str(requirements))
    run(sys.executable, "-m", "venv", str(venv))
    (wheel,) = work.glob("pivotal_sync-*.whl")
    python = str(venv / "bin" / "python")
    run(uv(), "pip", "install", "--python", python, "-r", str(requirements), str(wheel))
    return venv / "bin" / "pivotal-sync"


def test_the_installed_command_prints_its_help(installed: Path) -> None:
    result = subprocess.run([installed, "--help"], capture_output=True, text=True, check=True)
    for command in ("run", "migrate", "sandbox", "import", "dead-letters", "replay", "status"):
        assert command in result.stdout


def test_the_installed_wheel_ships_its_migrations(installed: Path) -> None:
    site = next(installed.parent.parent.glob("lib/python*/site-packages"))
    assert sorted(p.name for p in (site / "daemon" / "migrations").glob("*.sql")) == [
        "0001_initial.sql",
        "0002_create_intents.sql",
        "0003_quota_ledger.sql",
    ]
    assert (site / "daemon" / "queries.sql").exists()


async def test_the_installed_daemon_syncs_a_stream_end_to_end(
    installed: Path, scenario: ScenarioFactory
) -> None:
    async with scenario() as s:
        expected = await s.publish(generate(StreamSpec(customers=30, malformed=3, prefix="whl")))
        s.start_daemon(executable=[str(installed)])
        await s.wait_caught_up()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []
