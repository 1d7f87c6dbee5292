"""The alert rules: promtool checks and unit tests, metric names, runbooks, compose config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, promtool
from tests.deploy.metric_names import exported_metric_names, referenced_metric_names

pytestmark = pytest.mark.tools

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    out = run(promtool(), "check", "rules", str(RULES), cwd=RULES.parent)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_rules_pass_their_promtool_unit_tests() -> None:
    run(promtool(), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never silent"


def test_alerts_use_only_metrics_the_daemon_exports() -> None:
    exprs = [str(rule["expr"]) for rule in alert_rules()]
    assert referenced_metric_names(exprs) - exported_metric_names() == set()


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    headings = set(
        re.findall(r"^#+ .*?\{#([a-z0-9-]+)\}$|^#+ (\S+)$", OPERATIONS.read_text(), re.M)
    )
    anchors = {a or b.lower() for a, b in headings}
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"]
        assert annotations["description"]
        anchor = str(rule["alert"]).lower()
        assert annotations["runbook_url"].endswith(f"docs/operations.md#{anchor}")
        assert anchor in anchors, f"docs/operations.md has no section for {rule['alert']}"


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    # The compose file mounts both files side by side; promtool needs the same layout.
    compose = DEPLOY / "compose" / "prometheus"
    shutil.copy(compose / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "alerts.yaml")
    run(promtool(), "check", "config", "prometheus.yml", cwd=tmp_path)
