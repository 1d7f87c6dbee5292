"""Shared helpers for the deploy artefact tests: paths, tools, the CI-aware skip, chart renders.

A missing external tool skips its tests with a message saying how to install it, except under
CI (`CI=true`), where the same condition fails: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pivotal-sync"
DEPLOY = REPO / "deploy"
VENV_BIN = REPO / ".venv" / "bin"
RELEASE = "pivotal-sync"
NAMESPACE = "sync"
# Planted in the values so that tests can look for it in every rendered byte.
API_KEY = "pk_live_NEVER_IN_PLAIN_SIGHT_4f9c"
DATABASE_URL = "postgresql://sync:NEVER_IN_PLAIN_SIGHT_db@postgres:5432/sync"
REQUIRED_VALUES: dict[str, Any] = {"apiKey": {"value": API_KEY}, "database": {"url": DATABASE_URL}}
ALL_FEATURES_VALUES: dict[str, Any] = {
    **REQUIRED_VALUES,
    "replicaCount": 2,
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Sync"}},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}],
    },
    "keda": {"enabled": True, "maxReplicaCount": 12, "partitionCount": 6},
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "config": {"kafkaTopics": "crm.customers,crm.contacts"},
    "mapping": {"inline": "topics:\n  crm.contacts:\n    format: cloudevents\n"},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/team": "sync"},
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "pivotal-sync"}},
        }
    ],
}
EXISTING_SECRET_VALUES: dict[str, Any] = {
    "apiKey": {"existingSecret": "pivotal-credentials", "existingSecretKey": "token"},
    "database": {"existingSecret": "sync-db", "existingSecretKey": "url"},
}

Manifest = dict[str, Any]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; under CI=true fail instead, so a missing tool cannot turn CI green."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure, not a skip)")
    pytest.skip(reason)


def require_tool(name: str, install_hint: str) -> str:
    """The path of `name` (the project venv first, then PATH), or skip/fail with the hint."""
    local = VENV_BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        skip_or_fail(f"{name} not found: {install_hint}")
    return found


def promtool() -> str:
    return require_tool(
        "promtool", "install it with `apt-get install -y prometheus` (Debian/Ubuntu)"
    )


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two values mappings, override winning (as `helm -f a -f b` does)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render_files(values: Mapping[str, Any], *, upgrade: bool = False) -> dict[str, str]:
    """The chart rendered offline: template path → text (empty templates dropped)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            dict(values),
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    return {path: text for path, text in rendered.items() if text.strip()}


def manifests_of(files: Mapping[str, str]) -> list[Manifest]:
    """Every Kubernetes object in the rendered templates (NOTES.txt is not YAML)."""
    found: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of `kind` (and `name`), failing clearly when there is not exactly one."""
    matches = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(object name, pod spec) of every workload (Deployment, Job)."""
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]


@pytest.fixture(scope="session")
def default_files() -> dict[str, str]:
    return render_files(REQUIRED_VALUES)


@pytest.fixture(scope="session")
def default_manifests(default_files: dict[str, str]) -> list[Manifest]:
    return manifests_of(default_files)


@pytest.fixture(scope="session")
def full_files() -> dict[str, str]:
    return render_files(ALL_FEATURES_VALUES)


@pytest.fixture(scope="session")
def full_manifests(full_files: dict[str, str]) -> list[Manifest]:
    return manifests_of(full_files)


@pytest.fixture(scope="session")
def existing_secret_manifests() -> list[Manifest]:
    return manifests_of(render_files(EXISTING_SECRET_VALUES))


@pytest.fixture(scope="session")
def init_container_manifests() -> list[Manifest]:
    return manifests_of(
        render_files(merge(REQUIRED_VALUES, {"migrations": {"mode": "initContainer"}}))
    )


@pytest.fixture(scope="session")
def plain_manifests() -> list[Manifest]:
    """deploy/kubernetes/: the manifests for users without Helm."""
    found: list[Manifest] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found
