"""The chart's Kafka/Postgres/API security values: every recipe of docs/operations.md renders,
lints strictly and validates as Kubernetes, sets only variables the daemon declares, and
keeps every credential in a Secret reference."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from daemon.config import ENV_PREFIX, SECRET_FIELDS, Settings, _variable_for
from tests.deploy.conftest import (
    REPO,
    REQUIRED_VALUES,
    Manifest,
    manifests_of,
    merge,
    only,
    render_files,
)
from tests.deploy.test_kubernetes_schemas import supported_versions, validate

WARNING = 2
RECIPE = re.compile(r"```yaml\n# recipe: ([a-z0-9-]+)\n(.*?)```", re.S)


def recipes() -> dict[str, dict[str, Any]]:
    text = (REPO / "docs" / "operations.md").read_text()
    found = {name: yaml.safe_load(body) for name, body in RECIPE.findall(text)}
    assert len(found) >= 7, sorted(found)
    return found


RECIPES = recipes()


def rendered(values: dict[str, Any]) -> list[Manifest]:
    return manifests_of(render_files(values))


def daemon_env(manifests: list[Manifest]) -> list[dict[str, Any]]:
    deployment = only(manifests, "Deployment")
    env: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def declared_variables() -> set[str]:
    names = {_variable_for(field) for field in Settings.model_fields}
    return names | {f"{_variable_for(field)}_FILE" for field in SECRET_FIELDS}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_lints_renders_and_validates_strictly(name: str) -> None:
    """The documented values.yaml of each recipe is accepted and renders valid Kubernetes."""
    values = RECIPES[name]
    report = helm.lint(REPO / "helm" / "pivotal-sync", values, strict=True, namespace="sync")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []
    manifests = rendered(values)
    for version in supported_versions():
        assert validate(manifests, version) == []
    keda = rendered(merge(values, {"keda": {"enabled": True}}))
    assert validate(keda, supported_versions()[-1]) == []


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_set_only_declared_variables_and_secrets_by_reference(name: str) -> None:
    """Every PIVOTAL_SYNC_* variable the chart sets is a setting; credentials are secretKeyRefs."""
    env = daemon_env(rendered(RECIPES[name]))
    names = {e["name"] for e in env if e["name"].startswith(ENV_PREFIX)}
    assert names <= declared_variables(), names - declared_variables()
    for entry in env:
        if re.search(r"PASSWORD|SECRET|CLIENT_ID", entry["name"]):
            assert "secretKeyRef" in entry.get("valueFrom", {}), entry


def env_value(env: list[dict[str, Any]], name: str) -> Any:
    return next(e.get("value", e.get("valueFrom")) for e in env if e["name"] == name)


def test_strimzi_scram_wires_credentials_ca_and_keda_to_the_same_secrets() -> None:
    """SCRAM over TLS: the password by reference, the CA mounted as a file, KEDA reusing both."""
    manifests = rendered(merge(RECIPES["strimzi-scram"], {"keda": {"enabled": True}}))
    env = daemon_env(manifests)
    assert env_value(env, "PIVOTAL_SYNC_KAFKA_SECURITY_PROTOCOL") == "SASL_SSL"
    assert env_value(env, "PIVOTAL_SYNC_KAFKA_SASL_MECHANISM") == "SCRAM-SHA-512"
    assert env_value(env, "PIVOTAL_SYNC_KAFKA_SASL_USERNAME") == "pivotal-sync"
    assert env_value(env, "PIVOTAL_SYNC_KAFKA_SASL_PASSWORD") == {
        "secretKeyRef": {"name": "pivotal-sync", "key": "password"}
    }
    ca = env_value(env, "PIVOTAL_SYNC_KAFKA_SSL_CA_FILE")
    assert ca == "/etc/pivotal-sync/kafka-ca/ca.crt"
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")
    assert volume["secret"]["secretName"] == "sync-cluster-cluster-ca-cert"
    mounts = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "kafka-ca",
        "mountPath": "/etc/pivotal-sync/kafka-ca",
        "readOnly": True,
    } in mounts
    trigger = only(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    auth = only(manifests, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        ("password", "pivotal-sync", "password"),
        ("ca", "sync-cluster-cluster-ca-cert", "ca.crt"),
    }


def test_mtls_mounts_the_client_certificate_and_key() -> None:
    """mTLS points CERT_FILE and KEY_FILE at the mounted user Secret."""
    env = daemon_env(rendered(RECIPES["strimzi-mtls"]))
    assert (
        env_value(env, "PIVOTAL_SYNC_KAFKA_SSL_CERT_FILE") == "/etc/pivotal-sync/kafka-tls/user.crt"
    )
    assert (
        env_value(env, "PIVOTAL_SYNC_KAFKA_SSL_KEY_FILE") == "/etc/pivotal-sync/kafka-tls/user.key"
    )


def test_msk_iam_keda_uses_pod_identity_and_the_region_of_the_bootstrap_host() -> None:
    """KEDA's MSK IAM trigger gets the region from the bootstrap address and AWS pod identity."""
    manifests = rendered(merge(RECIPES["msk-iam"], {"keda": {"enabled": True}}))
    trigger = only(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["metadata"]["sasl"] == "aws_msk_iam"
    assert trigger["metadata"]["awsRegion"] == "eu-west-1"
    auth = only(manifests, "TriggerAuthentication")
    assert auth["spec"]["podIdentity"] == {"provider": "aws"}


def test_postgres_tls_reaches_the_daemon_and_the_migration_job() -> None:
    """sslmode and the mounted CA are set for the daemon and for the migration Job alike."""
    manifests = rendered(RECIPES["postgres-tls-and-proxy"])
    job = only(manifests, "Job")["spec"]["template"]["spec"]
    for env in (daemon_env(manifests), job["containers"][0]["env"]):
        assert env_value(env, "PIVOTAL_SYNC_DATABASE_SSLMODE") == "verify-full"
        assert (
            env_value(env, "PIVOTAL_SYNC_DATABASE_SSLROOTCERT")
            == "/etc/pivotal-sync/postgres-tls/global-bundle.pem"
        )
    assert job["volumes"][0]["secret"]["secretName"] == "rds-ca"
    daemon = daemon_env(manifests)
    assert (
        env_value(daemon, "PIVOTAL_SYNC_API_CA_FILE") == "/etc/pivotal-sync/api-ca/corporate-ca.crt"
    )
    assert env_value(daemon, "HTTPS_PROXY") == "http://proxy.corp.example:3128"


def test_extra_volumes_mounts_and_env_from_pass_through() -> None:
    """extraVolumes, extraVolumeMounts and envFrom reach the pod as given."""
    values = merge(
        REQUIRED_VALUES,
        {
            "extraVolumes": [{"name": "extra", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            "envFrom": [{"secretRef": {"name": "more-settings"}}],
        },
    )
    manifests = rendered(values)
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "extra", "emptyDir": {}} in pod["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "more-settings"}}]
    assert validate(manifests, supported_versions()[-1]) == []


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"protocol": "SASL_SSL"}, "kafka.security.mechanism"),
        ({"protocol": "SSL", "mechanism": "PLAIN"}, "kafka.security.protocol"),
        ({"protocol": "SASL_SSL", "mechanism": "PLAIN"}, "kafka.security.sasl.existingSecret"),
        ({"protocol": "SASL_SSL", "mechanism": "OAUTHBEARER"}, "kafka.security.oauth"),
        ({"tls": {"caSecret": "ca"}}, "kafka.security.protocol"),
        ({"protocol": "SSL", "tls": {"certKey": "c"}}, "kafka.security.tls"),
        ({"protocol": "TLS"}, "at '/kafka/security/protocol'"),
    ],
    ids=[
        "no-mechanism",
        "mechanism-without-sasl",
        "no-sasl-secret",
        "no-oauth",
        "tls-plaintext",
        "cert-without-key",
        "unknown-protocol",
    ],
)
def test_contradictory_security_values_fail_naming_the_value(
    security: dict[str, Any], message: str
) -> None:
    """Values that cannot work fail the render with the value to fix."""
    values = merge(REQUIRED_VALUES, {"kafka": {"security": security}})
    with pytest.raises(Exception) as caught:  # noqa: PT011 - helm's error type is generic
        render_files(values)
    assert message in str(caught.value)
