"""The chart's ci/*-values.yaml (chart-testing's convention), and what the release work added:
selectors that pick only the daemon, a relaxable security context, a helm test, pinning by
digest, a dashboard per release.

Every values file lints strictly and renders objects that validate strictly on each supported
Kubernetes version; together the files switch on every optional feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    DEPLOY,
    NAMESPACE,
    REQUIRED_VALUES,
    Manifest,
    manifests_of,
    merge,
    only,
    render_files,
)
from tests.deploy.test_kubernetes_schemas import supported_versions, validate

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
WARNING = 2
DIGEST = "sha256:" + "ab" * 32
OPENSHIFT = merge(REQUIRED_VALUES, {"securityContext": {"runAsUser": None, "runAsGroup": None}})


def values_of(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def rendered(values: dict[str, Any]) -> list[Manifest]:
    return manifests_of(render_files(values))


def pods(manifests: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(pod metadata, pod spec) of every pod the chart creates: Deployment, Job, test Pod."""
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield m["spec"]["template"]["metadata"], m["spec"]["template"]["spec"]
        elif m["kind"] == "Pod":
            yield m["metadata"], m["spec"]


def containers(spec: Manifest) -> list[Manifest]:
    found: list[Manifest] = spec.get("initContainers", []) + spec["containers"]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_each_ci_values_file_lints_strictly(path: Path) -> None:
    """`helm lint --strict` passes without warnings for every ci/ values file."""
    report = helm.lint(CHART, values_of(path), strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


@pytest.mark.parametrize("version", supported_versions())
@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_each_ci_values_file_renders_valid_kubernetes(path: Path, version: str) -> None:
    """Every object rendered from every ci/ values file validates strictly."""
    manifests = rendered(values_of(path))
    assert manifests
    assert validate(manifests, version) == []


def test_the_ci_values_files_switch_on_every_feature() -> None:
    """Each optional feature and each migrations mode is on in at least one ci/ values file."""
    files = [values_of(path) for path in CI_VALUES]
    for feature in ("serviceMonitor", "prometheusRule", "dashboard", "networkPolicy", "keda"):
        assert any(v.get(feature, {}).get("enabled") for v in files), feature
    modes = {v.get("migrations", {}).get("mode", "hook") for v in files}
    assert modes == {"hook", "initContainer", "none"}
    assert any(v.get("image", {}).get("digest") for v in files)
    assert any(v.get("apiKey", {}).get("existingSecret") for v in files)
    assert any(v.get("dashboard", {}).get("uid") for v in files)
    assert any(
        "runAsUser" in v.get("securityContext", {}) and v["securityContext"]["runAsUser"] is None
        for v in files
    )


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_only_the_daemons_pods_are_selected(path: Path) -> None:
    """Deployment, PDB, Service and NetworkPolicy select the daemon's pods, never a Job's."""
    manifests = rendered(values_of(path))
    selectors = [
        m["spec"]["selector"]["matchLabels"]
        for m in manifests
        if m["kind"] in ("Deployment", "PodDisruptionBudget")
    ]
    selectors += [m["spec"]["selector"] for m in manifests if m["kind"] == "Service"]
    selectors += [
        m["spec"]["podSelector"]["matchLabels"] for m in manifests if m["kind"] == "NetworkPolicy"
    ]
    assert selectors
    for metadata, _ in pods(manifests):
        daemon = metadata["labels"].get("app.kubernetes.io/component") is None
        for selector in selectors:
            assert selects(selector, metadata["labels"]) is daemon, (selector, metadata)


def test_the_migration_job_and_the_test_pod_carry_their_own_name_label() -> None:
    """The Job's and test pod's name labels say what they are, under the same instance."""
    manifests = rendered(REQUIRED_VALUES)
    job = only(manifests, "Job")["spec"]["template"]["metadata"]["labels"]
    test = only(manifests, "Pod")["metadata"]["labels"]
    assert job["app.kubernetes.io/name"] == "pivotal-sync-migrate"
    assert job["app.kubernetes.io/component"] == "migrate"
    assert test["app.kubernetes.io/name"] == "pivotal-sync-test"
    assert job["app.kubernetes.io/instance"] == test["app.kubernetes.io/instance"] == "pivotal-sync"


def test_pods_get_no_service_link_variables() -> None:
    """enableServiceLinks is off: no service-link variables in the daemon's environment."""
    for _, spec in pods(rendered(REQUIRED_VALUES)):
        assert spec["enableServiceLinks"] is False


def test_a_null_uid_and_gid_are_left_out_for_openshift() -> None:
    """runAsUser/runAsGroup null: omitted everywhere, the rest stays restricted."""
    for _, spec in pods(rendered(OPENSHIFT)):
        for context in [spec["securityContext"], *(c["securityContext"] for c in containers(spec))]:
            assert "runAsUser" not in context
            assert "runAsGroup" not in context
            assert context["runAsNonRoot"] is True
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(spec):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_security_context_fields_can_be_added_and_overridden() -> None:
    """securityContext.pod and .container are merged over the restricted defaults."""
    values = merge(
        REQUIRED_VALUES,
        {
            "securityContext": {
                "pod": {"fsGroup": 2000},
                "container": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}},
            }
        },
    )
    for _, spec in pods(rendered(values)):
        assert spec["securityContext"]["fsGroup"] == 2000
        assert spec["securityContext"]["runAsUser"] == 10001
        for container in containers(spec):
            context = container["securityContext"]
            assert context["seccompProfile"] == {"type": "Localhost", "localhostProfile": "x"}
            assert context["readOnlyRootFilesystem"] is True


def test_an_image_digest_pins_every_pod() -> None:
    """image.digest replaces the tag in every pod, the test pod included."""
    values = merge(REQUIRED_VALUES, {"image": {"digest": DIGEST, "tag": "ignored"}})
    images = {c["image"] for _, spec in pods(rendered(values)) for c in containers(spec)}
    assert images == {f"ghcr.io/pivotal-sync/pivotal-sync@{DIGEST}"}


def test_a_malformed_digest_is_refused() -> None:
    """A digest that is not sha256:<64 hex> fails the schema."""
    with pytest.raises(Exception, match="digest"):
        render_files(merge(REQUIRED_VALUES, {"image": {"digest": "latest"}}))


def test_helm_test_checks_readyz_through_the_service() -> None:
    """The `helm test` pod asks the release's Service for /readyz and fails unless ready."""
    manifests = rendered(REQUIRED_VALUES)
    test = only(manifests, "Pod")
    service = only(manifests, "Service")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = test["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    port = service["spec"]["ports"][0]["port"]
    assert container["args"][1] == f"http://{service['metadata']['name']}:{port}/readyz"
    assert "urllib.request.urlopen(url" in container["args"][0]
    assert test["spec"]["restartPolicy"] == "Never"


def _dashboard(values: dict[str, Any], release: str = "pivotal-sync") -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(
            merge(values, {"dashboard": {"enabled": True}}),
            name=release,
            namespace=NAMESPACE,
            is_install=True,
            is_upgrade=False,
        )
    (config_map,) = [
        doc for doc in yaml.safe_load_all(files["pivotal-sync/templates/dashboard.yaml"]) if doc
    ]
    board: dict[str, Any] = json.loads(config_map["data"]["pivotal-sync.json"])
    return board


def test_each_release_gets_its_own_dashboard_uid_and_title() -> None:
    """Two releases in one Grafana: different UIDs and titles, the same panels."""
    first, second = _dashboard(REQUIRED_VALUES, "sync-a"), _dashboard(REQUIRED_VALUES, "sync-b")
    assert (first["uid"], second["uid"]) == ("sync-a-pivotal-sync", "sync-b-pivotal-sync")
    assert first["title"] == f"pivotal-sync ({NAMESPACE}/sync-a)"
    assert first["panels"] == second["panels"]
    deployed = json.loads((DEPLOY / "grafana" / "pivotal-sync.json").read_text())
    assert {**first, "uid": deployed["uid"], "title": deployed["title"]} == deployed


def test_the_dashboard_uid_and_title_can_be_set() -> None:
    """dashboard.uid and dashboard.title override the per-release defaults."""
    board = _dashboard(merge(REQUIRED_VALUES, {"dashboard": {"uid": "sync-prod", "title": "P"}}))
    assert (board["uid"], board["title"]) == ("sync-prod", "P")
