"""Every rendered object is valid Kubernetes, strictly, for each minor version still supported.

The versions are the three newest minors the installed kubernetes-validate has schemas for (the
Kubernetes project supports the three newest releases). Custom resources (Prometheus Operator,
KEDA) have no schema there: they are checked for the fields their controllers require instead.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from tests.deploy.conftest import Manifest

SUPPORTED_MINORS = 3
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("groups",),
    ("keda.sh/v1alpha1", "ScaledObject"): ("scaleTargetRef", "triggers"),
    # Nothing is required in its spec; its contents are checked in test_chart_security.py.
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (),
}
RENDERS = [
    "default_manifests",
    "full_manifests",
    "existing_secret_manifests",
    "init_container_manifests",
    "plain_manifests",
]


def supported_versions() -> list[str]:
    minors = sorted({kv_utils.major_minor(v) for v in kv_utils.all_versions()}, key=_key)
    return minors[-SUPPORTED_MINORS:]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def validate(manifests: list[Manifest], version: str) -> list[str]:
    errors: list[str] = []
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        required = CUSTOM_RESOURCES.get((manifest["apiVersion"], manifest["kind"]))
        if required is not None:
            missing = [field for field in required if field not in manifest.get("spec", {})]
            errors += [f"{name}: spec.{field} missing" for field in missing]
            continue
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name} ({version}): {path}: {exc.message}")
    return errors


@pytest.mark.parametrize("version", supported_versions())
@pytest.mark.parametrize("render", RENDERS)
def test_manifests_validate_strictly(
    render: str, version: str, request: pytest.FixtureRequest
) -> None:
    manifests: list[Any] = request.getfixturevalue(render)
    assert manifests, render
    assert validate(manifests, version) == []


def test_a_bad_manifest_is_caught() -> None:
    # The validator itself must not be a no-op: a typo'd field fails strict validation.
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 9000, "targtPort": "metrics"}]},
    }
    assert validate([bad], supported_versions()[-1]) != []
