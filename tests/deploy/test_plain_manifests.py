"""deploy/kubernetes/: the manifests for users without Helm keep the chart's guarantees.

kustomize itself is not run here (no kubectl or kustomize binary); the objects are validated
by test_kubernetes_schemas.py and their security context by test_chart.py.
"""

from __future__ import annotations

import yaml

from tests.deploy.conftest import DEPLOY, Manifest, only

KUSTOMIZE = DEPLOY / "kubernetes"


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_grace_period_outlasts_the_drain_timeout(plain_manifests: list[Manifest]) -> None:
    spec = only(plain_manifests, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert spec["terminationGracePeriodSeconds"] > float(env["PIVOTAL_SYNC_DRAIN_TIMEOUT_SECONDS"])


def test_probes_and_secrets_match_the_chart(plain_manifests: list[Manifest]) -> None:
    spec = only(plain_manifests, "Deployment")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e for e in container["env"]}
    for variable in ("PIVOTAL_API_KEY", "PIVOTAL_SYNC_DATABASE_URL"):
        assert "secretKeyRef" in env[variable]["valueFrom"]
    assert [c["args"] for c in spec["initContainers"]] == [["migrate"]]
    assert not [m for m in plain_manifests if m["kind"] in ("Secret", "ConfigMap")]


def test_config_map_holds_no_secret() -> None:
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    for generator in kustomization["configMapGenerator"]:
        for literal in generator["literals"]:
            assert not literal.startswith(("PIVOTAL_API_KEY", "PIVOTAL_SYNC_DATABASE_URL"))
