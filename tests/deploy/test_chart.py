"""The Helm chart: strict lint, schema, and what every render must guarantee."""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from daemon.config import ENV_PREFIX, Settings
from tests.deploy.conftest import (
    ALL_FEATURES_VALUES,
    API_KEY,
    CHART,
    DATABASE_URL,
    DEPLOY,
    EXISTING_SECRET_VALUES,
    REQUIRED_VALUES,
    Manifest,
    manifests_of,
    merge,
    only,
    pod_specs,
    render_files,
)

WARNING = 2
# Kubernetes objects passed through to the templates as they are: their fields are documented
# by Kubernetes, the comment above the block says what it is for.
PASSTHROUGH_KEYS = {"livenessProbe", "readinessProbe", "startupProbe"}


@pytest.mark.parametrize(
    "values",
    [REQUIRED_VALUES, ALL_FEATURES_VALUES, EXISTING_SECRET_VALUES],
    ids=["required-only", "all-features", "existing-secrets"],
)
def test_chart_lints_strictly_without_warnings(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, namespace="sync")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["errors"] == [], report
    assert problems == [], problems


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"database": {"url": DATABASE_URL}}, "at '/apiKey'"),
        ({"apiKey": {"value": API_KEY}}, "at '/database'"),
        (merge(REQUIRED_VALUES, {"replicaCount": -1}), "at '/replicaCount': minimum"),
        (
            merge(REQUIRED_VALUES, {"apiKey": {"existingSecret": "both-set"}}),
            "at '/apiKey': 'oneOf' failed",
        ),
        (merge(REQUIRED_VALUES, {"config": {"kafkaTopc": "typo"}}), "'kafkaTopc' not allowed"),
        (merge(REQUIRED_VALUES, {"config": {"maxInFlight": 0}}), "at '/config/maxInFlight'"),
        (
            merge(REQUIRED_VALUES, {"securityContext": {"runAsUser": 0}}),
            "at '/securityContext/runAsUser'",
        ),
        (
            merge(REQUIRED_VALUES, {"terminationGracePeriodMarginSeconds": 0}),
            "at '/terminationGracePeriodMarginSeconds'",
        ),
        (merge(REQUIRED_VALUES, {"migrations": {"mode": "sometimes"}}), "at '/migrations/mode'"),
    ],
    ids=[
        "no-api-key-source",
        "no-database-source",
        "negative-replicas",
        "two-api-key-sources",
        "unknown-config-key",
        "zero-in-flight",
        "root-user",
        "no-grace-margin",
        "unknown-migration-mode",
    ],
)
def test_schema_rejects_bad_values_naming_the_value(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert message in str(caught.value)


def test_a_missing_secret_source_names_both_ways_to_give_it() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema({})
    for alternative in ("apiKey/value", "apiKey/existingSecret", "database/url"):
        assert f"at '/{alternative}'" in str(caught.value)


def test_every_value_has_a_comment_above_it() -> None:
    missing: list[str] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        inside_passthrough = any(k in PASSTHROUGH_KEYS for _, k in parents)
        parents.append((indent, key))
        if inside_passthrough:
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            missing.append(f"line {number + 1}: {key}")
    assert missing == [], "values without a comment above them:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "render", ["full_manifests", "init_container_manifests", "plain_manifests"]
)
def test_pods_run_with_the_restricted_security_context(
    render: str, request: pytest.FixtureRequest
) -> None:
    specs = list(pod_specs(request.getfixturevalue(render)))
    assert specs
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert isinstance(context["runAsUser"], int), name
            assert context["runAsUser"] > 0, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name


def test_probes_hit_livez_and_readyz_on_the_metrics_port(
    default_manifests: list[Manifest],
) -> None:
    deployment = only(default_manifests, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports == {"metrics": 9000}
    assert env["PIVOTAL_SYNC_HTTP_PORT"] == "9000"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    service = only(default_manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


@pytest.mark.parametrize("drain_seconds", [0, 20, 20.5, 119.1, 3600])
def test_grace_period_is_always_longer_than_the_drain_timeout(drain_seconds: float) -> None:
    values = merge(REQUIRED_VALUES, {"config": {"drainTimeoutSeconds": drain_seconds}})
    deployment = only(manifests_of(render_files(values)), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert float(env["PIVOTAL_SYNC_DRAIN_TIMEOUT_SECONDS"]) == drain_seconds
    assert spec["terminationGracePeriodSeconds"] >= math.ceil(drain_seconds) + 1
    assert spec["terminationGracePeriodSeconds"] > drain_seconds


def test_config_values_become_the_daemons_documented_variables(
    default_manifests: list[Manifest],
) -> None:
    container = only(default_manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields} | {
        "PIVOTAL_API_KEY"
    }
    assert sorted(set(names) - known) == []
    assert len(names) == len(set(names))
    assert "PIVOTAL_SYNC_KAFKA_DEAD_LETTER_TOPIC" not in names  # empty: daemon default applies


def test_secrets_reach_pods_only_through_secret_key_refs(
    full_files: dict[str, str], full_manifests: list[Manifest]
) -> None:
    for name, spec in pod_specs(full_manifests):
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = {e["name"]: e for e in container["env"]}
            for variable in ("PIVOTAL_API_KEY", "PIVOTAL_SYNC_DATABASE_URL"):
                if variable in env:
                    assert "value" not in env[variable], (name, variable)
                    assert "secretKeyRef" in env[variable]["valueFrom"], (name, variable)
    # The planted values appear nowhere in clear text: not in a ConfigMap, an env value, a note.
    for path, text in full_files.items():
        assert API_KEY not in text, path
        assert DATABASE_URL not in text, path
    secrets = [m for m in full_manifests if m["kind"] == "Secret"]
    decoded = {base64.b64decode(v).decode() for secret in secrets for v in secret["data"].values()}
    assert {API_KEY, DATABASE_URL} <= decoded


def test_existing_secrets_are_referenced_and_no_secret_is_created(
    existing_secret_manifests: list[Manifest],
) -> None:
    assert [m for m in existing_secret_manifests if m["kind"] == "Secret"] == []
    for name, spec in pod_specs(existing_secret_manifests):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["PIVOTAL_SYNC_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "sync-db",
            "key": "url",
        }, name
        if "PIVOTAL_API_KEY" in env:
            assert env["PIVOTAL_API_KEY"]["valueFrom"]["secretKeyRef"] == {
                "name": "pivotal-credentials",
                "key": "token",
            }
    deployment = only(existing_secret_manifests, "Deployment")
    assert "annotations" not in deployment["spec"]["template"]["metadata"]


def test_a_changed_secret_rolls_the_pods() -> None:
    def checksum(key: str) -> str:
        values = merge(REQUIRED_VALUES, {"apiKey": {"value": key}})
        deployment = only(manifests_of(render_files(values)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    assert checksum("pk_one") != checksum("pk_two")


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(
    default_manifests: list[Manifest],
) -> None:
    job = only(default_manifests, "Job")
    hook_secret = only(default_manifests, "Secret", "pivotal-sync-migrate")
    for hooked in (job, hook_secret):
        assert hooked["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # The database URL exists before the Job needs it, and the Job never sees the API key.
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    assert {e["name"] for e in container["env"]} == {
        "PIVOTAL_SYNC_DATABASE_URL",
        "PIVOTAL_SYNC_LOG_FORMAT",
    }
    deployment = only(default_manifests, "Deployment")
    assert "initContainers" not in deployment["spec"]["template"]["spec"]


def test_init_container_mode_migrates_in_each_pod_and_creates_no_job(
    init_container_manifests: list[Manifest],
) -> None:
    assert [m for m in init_container_manifests if m["kind"] == "Job"] == []
    spec = only(init_container_manifests, "Deployment")["spec"]["template"]["spec"]
    assert [c["args"] for c in spec["initContainers"]] == [["migrate"]]


def test_prometheus_rule_is_the_deploy_rules_file(full_manifests: list[Manifest]) -> None:
    deploy_text = (DEPLOY / "prometheus" / "alerts.yaml").read_bytes()
    assert (CHART / "files" / "prometheus" / "alerts.yaml").read_bytes() == deploy_text, (
        "cp deploy/prometheus/alerts.yaml helm/pivotal-sync/files/prometheus/alerts.yaml"
    )
    rule = only(full_manifests, "PrometheusRule", "pivotal-sync")
    assert rule["spec"] == yaml.safe_load(deploy_text)


def test_backlog_threshold_is_recorded_from_values(full_manifests: list[Manifest]) -> None:
    rule = only(full_manifests, "PrometheusRule", "pivotal-sync-thresholds")
    [recorded] = rule["spec"]["groups"][0]["rules"]
    assert recorded == {
        "record": "pivotal_sync:backlog_drain_threshold_seconds",
        "expr": "vector(3600)",
    }


def test_dashboard_config_map_carries_the_deploy_dashboard_with_the_releases_uid(
    full_manifests: list[Manifest],
) -> None:
    deploy_text = (DEPLOY / "grafana" / "pivotal-sync.json").read_text(encoding="utf-8")
    config_map = only(full_manifests, "ConfigMap", "pivotal-sync-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    # Byte for byte the generated file, but for the release's title (the UID of a release
    # named pivotal-sync is the file's own).
    expected = deploy_text.replace(
        '\n  "title": "pivotal-sync",', '\n  "title": "pivotal-sync (sync/pivotal-sync)",'
    )
    assert expected != deploy_text
    assert config_map["data"] == {"pivotal-sync.json": expected}


def test_keda_never_scales_past_the_partition_count(full_manifests: list[Manifest]) -> None:
    scaled = only(full_manifests, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 6  # asked for 12, topic has 6 partitions
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "pivotal-sync"
    assert "replicas" not in only(full_manifests, "Deployment")["spec"]


def test_optional_features_are_off_by_default(default_manifests: list[Manifest]) -> None:
    kinds = sorted({m["kind"] for m in default_manifests})
    assert kinds == [
        "Deployment",
        "Job",
        "Pod",  # the `helm test` hook: created only by `helm test`
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
    ]


def test_notes_say_what_to_check_after_install(default_files: dict[str, str]) -> None:
    notes = next(text for path, text in default_files.items() if path.endswith("NOTES.txt"))
    for needle in ("/readyz", "/metrics", "pivotal_sync_consumer_lag_records"):
        assert needle in notes
