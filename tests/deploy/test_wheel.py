"""The wheel built from pyproject.toml: the runtime, its operator tools, the sandbox and its
SQL — and nothing that is only for development (the demo stack, sample streams, stand-ins, the
dashboard generator, tests, benchmarks)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.conftest import REPO

UV = REPO / ".tools" / "bin" / "uv"
DEVELOPMENT_ONLY_MODULES = {"demo", "sample_stream", "local_stack", "local_services", "dashboard"}
DEVELOPMENT_ONLY_DIRECTORIES = {"devtools", "tests", "bench", "scripts"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel freshly built with `uv build --wheel`."""
    if not UV.exists():
        pytest.fail("uv is needed to build the wheel: `make env` installs it into .tools/")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [str(UV), "build", "--wheel", "--out-dir", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("pivotal_sync-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel: Path) -> list[PurePosixPath]:
    with zipfile.ZipFile(wheel) as archive:
        return [PurePosixPath(name) for name in archive.namelist()]


def package_files(wheel_files: list[PurePosixPath]) -> set[str]:
    """Everything but the .dist-info metadata."""
    return {str(p) for p in wheel_files if not p.parts[0].endswith(".dist-info")}


def daemon_source_files() -> set[str]:
    """The runtime as the checkout holds it: every file under daemon/ but bytecode caches."""
    return {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "daemon").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_exactly_the_runtime_package(wheel_files: list[PurePosixPath]) -> None:
    """Every file of daemon/ is in the wheel, and the wheel holds nothing else."""
    assert package_files(wheel_files) == daemon_source_files()


def test_the_wheel_holds_the_pipeline_the_tools_the_sandbox_and_the_sql(
    wheel_files: list[PurePosixPath],
) -> None:
    """The rooms the image runs are all there, named as in the repository."""
    files = package_files(wheel_files)
    for module in ("cli", "app", "source", "intake", "dispatcher", "recorder", "checkpoints"):
        assert f"daemon/{module}.py" in files
    for tool in ("common", "importing", "dead_letters", "replay", "status"):
        assert f"daemon/tools/{tool}.py" in files
    assert "daemon/sandbox/server.py" in files
    assert "daemon/queries.sql" in files
    assert {"daemon/migrations/0001_initial.sql", "daemon/migrations/0002_create_intents.sql"} <= (
        files
    )
    assert "daemon/py.typed" in files


def test_nothing_development_only_is_in_the_wheel(wheel_files: list[PurePosixPath]) -> None:
    """No devtools, tests, benchmarks or scripts, and no demo or generator module anywhere."""
    assert not [p for p in wheel_files if p.parts[0] in DEVELOPMENT_ONLY_DIRECTORIES]
    assert not [p for p in wheel_files if p.suffix == ".py" and p.stem in DEVELOPMENT_ONLY_MODULES]


def test_the_wheel_declares_the_pivotal_sync_command(wheel: Path) -> None:
    """The console script `pivotal-sync` points into the runtime's CLI."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(name).decode()
    assert "[console_scripts]\npivotal-sync = daemon.cli:main" in entry_points
