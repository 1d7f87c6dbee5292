"""Unknown PIVOTAL_SYNC_* variables stop start-up; the test suite's and Kubernetes' do not."""

import re
from pathlib import Path

import pytest

from daemon.config import known_variables, load_settings
from daemon.errors import ConfigError

# A variable's name as written; `PIVOTAL_SYNC_DATABASE_SSL*` names a family, not a variable.
WRITTEN_NAME = re.compile(r"\bPIVOTAL_SYNC_[A-Z0-9_]*[A-Z0-9]\b(?!\*)")
REPO = Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".tpl", ".json"}
EXAMPLES = {
    "tests/unit/test_unknown_settings.py",
    "tests/e2e/test_tools_lifecycle.py",
    "daemon/unknown_settings.py",
}


def test_a_misspelt_variable_is_refused_with_the_closest_known_name() -> None:
    """A typo names itself and the setting it most likely meant."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"PIVOTAL_SYNC_KAFKA_TOPPIC": "orders"})
    assert caught.value.variable == "PIVOTAL_SYNC_KAFKA_TOPPIC"
    assert "did you mean PIVOTAL_SYNC_KAFKA_TOPIC?" in str(caught.value)


def test_the_value_of_an_unknown_variable_is_never_echoed() -> None:
    """The message names the variable only: a mistyped secret stays out of it."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"PIVOTAL_SYNC_DATABSE_URL": "postgresql://u:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)
    assert "PIVOTAL_SYNC_DATABASE_URL" in str(caught.value)


def test_every_unknown_variable_is_listed() -> None:
    """Several typos are reported at once, not one per restart."""
    with pytest.raises(ConfigError, match="also unknown: PIVOTAL_SYNC_ZZZ"):
        load_settings({"PIVOTAL_SYNC_LOG_LEVELL": "info", "PIVOTAL_SYNC_ZZZ": "1"})


def test_a_name_close_to_nothing_points_at_the_list_of_settings() -> None:
    """Without a close match the message says where the settings are listed."""
    with pytest.raises(ConfigError, match=r"listed in README\.md"):
        load_settings({"PIVOTAL_SYNC_QQQQQQQQQQQQQQQQQQ": "1"})


def test_the_test_suites_variables_are_not_refused() -> None:
    """PIVOTAL_SYNC_TEST_* belong to the fixtures, whose daemons inherit them."""
    settings = load_settings(
        {
            "PIVOTAL_SYNC_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres",
            "PIVOTAL_SYNC_TEST_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "PIVOTAL_SYNC_TEST_FIXTURES_PROBE_REPORT": "/tmp/report",
        }
    )
    assert settings.kafka_topic == "crm.customers"


def test_kubernetes_service_links_are_not_refused() -> None:
    """A Service named pivotal-sync injects these into every pod of the namespace."""
    settings = load_settings(
        {
            "PIVOTAL_SYNC_SERVICE_HOST": "10.0.0.7",
            "PIVOTAL_SYNC_SERVICE_PORT": "9000",
            "PIVOTAL_SYNC_SERVICE_PORT_METRICS": "9000",
            "PIVOTAL_SYNC_PORT": "tcp://10.0.0.7:9000",
            "PIVOTAL_SYNC_PORT_9000_TCP": "tcp://10.0.0.7:9000",
            "PIVOTAL_SYNC_PORT_9000_TCP_PROTO": "tcp",
            "PIVOTAL_SYNC_PORT_9000_TCP_PORT": "9000",
            "PIVOTAL_SYNC_PORT_9000_TCP_ADDR": "10.0.0.7",
            "PIVOTAL_SYNC_METRICS_SERVICE_HOST": "10.0.0.8",
        }
    )
    assert settings.http_port == 9000


def test_a_port_typo_is_refused_even_though_service_links_end_in_port() -> None:
    """Only a tcp:// value makes a *_PORT variable a service link."""
    with pytest.raises(ConfigError, match="did you mean PIVOTAL_SYNC_HTTP_PORT"):
        load_settings({"PIVOTAL_SYNC_HTPP_PORT": "9100"})


def test_every_variable_the_repository_sets_is_known_or_reserved() -> None:
    """Each PIVOTAL_SYNC_ name in code, manifests and scripts is a setting or the tests'."""
    names: dict[str, str] = {}
    for path in _sources():
        relative = path.relative_to(REPO).as_posix()
        # The refusing module and the tests of it show refused names on purpose.
        if relative in EXAMPLES:
            continue
        for name in WRITTEN_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            names.setdefault(name, relative)
    stray = {
        name: path
        for name, path in names.items()
        if name not in known_variables() and not name.startswith("PIVOTAL_SYNC_TEST_")
    }
    assert stray == {}


def _sources() -> list[Path]:
    """Code, manifests and scripts (not docs, which show refused names as examples)."""
    found = [
        REPO / name for name in ("Makefile", "Dockerfile", ".ci/run") if (REPO / name).exists()
    ]
    for top in ("daemon", "devtools", "tests", "bench", "helm", "deploy", ".github"):
        found += [
            p
            for p in (REPO / top).rglob("*")
            if p.suffix in {".py", ".yaml", ".yml", ".tpl", ".json"}
            and "__pycache__" not in p.parts
        ]
    return found
