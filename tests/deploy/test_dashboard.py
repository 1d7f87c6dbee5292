"""The Grafana dashboard: committed copies up to date, every query valid PromQL on real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools import dashboard
from tests.deploy.conftest import REPO, promtool
from tests.deploy.metric_names import exported_metric_names, referenced_metric_names

# Grafana's variables, replaced by what Grafana would send so that promtool can parse the query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$namespace": "sync",
    "$job": "pivotal-sync",
    "$pod": ".*",
}


def committed() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (REPO / dashboard.OUTPUT_PATHS[0]).read_text(encoding="utf-8")
    )
    return loaded


def substituted(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@pytest.mark.parametrize("path", dashboard.OUTPUT_PATHS, ids=str)
def test_committed_dashboard_is_what_the_program_generates(path: Path) -> None:
    assert (REPO / path).read_text(encoding="utf-8") == dashboard.render(), (
        "run: python -m devtools.dashboard"
    )


def test_check_mode_reports_an_up_to_date_dashboard() -> None:
    assert dashboard.main(["--check", "--root", str(REPO)]) == 0


def test_check_mode_fails_on_a_stale_copy(tmp_path: Path) -> None:
    assert dashboard.main(["--check", "--root", str(tmp_path)]) == 1
    assert dashboard.main(["--root", str(tmp_path)]) == 0
    assert dashboard.main(["--check", "--root", str(tmp_path)]) == 0


def test_dashboard_is_templated_on_datasource_namespace_job_and_pod() -> None:
    """Every query is scoped by namespace, job (the release) and pod: releases never merge."""
    board = dashboard.dashboard()
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "job", "pod"]
    for expr in dashboard.queries(board):
        assert 'namespace=~"$namespace"' in expr
        assert 'job=~"$job"' in expr
        assert 'pod=~"$pod"' in expr


def test_process_panels_show_only_the_daemons_processes() -> None:
    """CPU and memory panels read process_* joined to the daemon's own series."""
    exprs = [e for e in dashboard.queries(dashboard.dashboard()) if "process_" in e]
    assert {"rate(process_cpu_seconds_total", "process_resident_memory_bytes"} <= {
        re.split(r"\{", e)[0] for e in exprs
    }
    for expr in exprs:
        assert "and on (namespace, job, pod) pivotal_sync_ready{" in expr


def test_panel_ids_and_positions_are_unique() -> None:
    panels = dashboard.dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells)
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)


def test_dashboard_uses_only_metrics_the_daemon_exports() -> None:
    board = dashboard.dashboard()
    exprs = dashboard.queries(board) + [
        v["definition"] for v in board["templating"]["list"] if "definition" in v
    ]
    referenced = referenced_metric_names(exprs)
    assert len(referenced) >= 20
    assert referenced - exported_metric_names() == set()


@pytest.mark.tools
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    board = dashboard.dashboard()
    exprs = [substituted(e) for e in dashboard.queries(board)]
    # label_values(<selector>, label): the selector must parse too.
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), \w+\)", variable.get("definition", ""))
        if match:
            exprs.append(substituted(match.group(1)))
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
