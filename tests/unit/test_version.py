"""The running version is visible everywhere: --version, the build-info metric, status."""

import platform
import tomllib
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from daemon.cli import main
from daemon.metrics import Metrics
from daemon.tools.status import StatusReport, daemon_version_from, render
from daemon.version import version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    found = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert isinstance(found, str)
    return found


def test_the_version_is_pyprojects() -> None:
    """The installed metadata, hence pyproject.toml, is the one source of the version."""
    assert version() == package_version()


def test_dash_dash_version_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`pivotal-sync --version` prints the program name and version, and exits 0."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"pivotal-sync {package_version()}\n"


def test_build_info_is_exported_with_the_version() -> None:
    """pivotal_sync_build_info{version=…} is 1 from the first scrape."""
    metrics = Metrics()
    labels = {"version": version(), "python_version": platform.python_version()}
    value = metrics.registry.get_sample_value("pivotal_sync_build_info", labels)
    assert value == 1.0


def test_process_metrics_are_exported_on_the_private_registry() -> None:
    """CPU, memory and file descriptors come with the daemon's own metrics."""
    text = generate_latest(Metrics().registry).decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert f"\n{name}" in text or text.startswith(name), name


def test_no_created_series_are_exported() -> None:
    """`_created` series (29 % of a scrape, read by nothing) are turned off."""
    text = generate_latest(Metrics().registry).decode()
    assert "_created" not in text


def test_status_shows_its_own_and_the_daemons_version() -> None:
    """`status` prints both versions; the daemon's comes from its build-info metric."""
    samples = {'pivotal_sync_build_info{{python_version="3.11.2",version="9.8.7"}}': 1.0}
    report = StatusReport(topic="t", group="g", daemon_version=daemon_version_from(samples))
    first = render(report).splitlines()[0]
    assert first == f"pivotal-sync {version()} · daemon 9.8.7"


def test_status_says_when_the_daemons_version_is_unknown() -> None:
    """Without daemon metrics the daemon's version is reported as unknown, not guessed."""
    report = StatusReport(topic="t", group="g")
    assert "daemon unknown" in render(report).splitlines()[0]
