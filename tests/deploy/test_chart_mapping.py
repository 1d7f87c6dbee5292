"""The chart and the mapping file: mounted from a ConfigMap (the chart's or an existing one),
named by PIVOTAL_SYNC_MAPPING_FILE, and a change of an inline mapping rolls the pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from daemon.formats.mapping import load_mapping
from tests.deploy.conftest import (
    CHART,
    REQUIRED_VALUES,
    Manifest,
    manifests_of,
    merge,
    only,
    render_files,
)

WARNING = 2
MAPPING = """\
topics:
  crm.public.accounts:
    format: debezium
    kind: customer
    id: account_id
    fields:
      name: company_name
  crm.customers:
    format: cloudevents
"""
INLINE_VALUES = merge(
    REQUIRED_VALUES,
    {
        "config": {"kafkaTopics": "crm.public.accounts,crm.customers"},
        "mapping": {"inline": MAPPING},
    },
)
EXISTING_VALUES = merge(REQUIRED_VALUES, {"mapping": {"existingConfigMap": "crm-mapping"}})


def pod_template(manifests: list[Manifest]) -> dict[str, Any]:
    template: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]
    return template


def env_of(template: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize("values", [INLINE_VALUES, EXISTING_VALUES], ids=["inline", "existing"])
def test_chart_with_a_mapping_lints_strictly(values: dict[str, Any]) -> None:
    """Both ways of giving the mapping pass helm lint --strict."""
    report = helm.lint(CHART, values, strict=True, namespace="sync")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def test_inline_mapping_is_mounted_and_named_by_the_variable(tmp_path: Path) -> None:
    """The ConfigMap carries the file unchanged, the pod mounts it read-only where
    PIVOTAL_SYNC_MAPPING_FILE points, and the daemon's loader accepts what is mounted."""
    manifests = manifests_of(render_files(INLINE_VALUES))
    config_map = only(manifests, "ConfigMap", "pivotal-sync-mapping")
    assert config_map["data"] == {"mapping.yaml": MAPPING}
    template = pod_template(manifests)
    env = env_of(template)
    assert env["PIVOTAL_SYNC_MAPPING_FILE"] == "/etc/pivotal-sync/mapping/mapping.yaml"
    assert env["PIVOTAL_SYNC_KAFKA_TOPICS"] == "crm.public.accounts,crm.customers"
    mount = template["spec"]["containers"][0]["volumeMounts"][0]
    assert mount == {"name": "mapping", "mountPath": "/etc/pivotal-sync/mapping", "readOnly": True}
    volume = template["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == "pivotal-sync-mapping"
    mounted = tmp_path / "mapping.yaml"
    mounted.write_text(config_map["data"]["mapping.yaml"])
    assert set(load_mapping(mounted).declared) == {"crm.public.accounts", "crm.customers"}


def test_a_changed_inline_mapping_rolls_the_pods() -> None:
    """The checksum annotation follows the mapping's content."""

    def checksum(text: str) -> str:
        values = merge(INLINE_VALUES, {"mapping": {"inline": text}})
        annotations = pod_template(manifests_of(render_files(values)))["metadata"]["annotations"]
        return str(annotations["checksum/mapping"])

    assert checksum(MAPPING) != checksum(MAPPING.replace("company_name", "account_name"))


def test_existing_config_map_is_mounted_and_none_is_created() -> None:
    """An existing ConfigMap is referenced; the chart creates none and adds no checksum."""
    manifests = manifests_of(render_files(EXISTING_VALUES))
    assert [m for m in manifests if m["kind"] == "ConfigMap"] == []
    template = pod_template(manifests)
    assert template["spec"]["volumes"][0]["configMap"]["name"] == "crm-mapping"
    assert "checksum/mapping" not in template["metadata"].get("annotations", {})
    assert "PIVOTAL_SYNC_MAPPING_FILE" in env_of(template)


def test_no_mapping_mounts_nothing() -> None:
    """Without a mapping the pod keeps the built-in contract: no volume, no variable."""
    template = pod_template(manifests_of(render_files(REQUIRED_VALUES)))
    assert "volumes" not in template["spec"]
    assert "PIVOTAL_SYNC_MAPPING_FILE" not in env_of(template)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"mapping": {"inline": MAPPING, "existingConfigMap": "x"}}, "at '/mapping'"),
        ({"mapping": {"key": "../etc/passwd"}}, "at '/mapping/key'"),
        ({"config": {"kafkaTopics": "a,,b"}}, "at '/config/kafkaTopics'"),
    ],
    ids=["two-mapping-sources", "key-with-a-path", "empty-topic-name"],
)
def test_schema_rejects_bad_mapping_values(override: dict[str, Any], message: str) -> None:
    """Both sources at once, a key that is a path, an empty topic name: refused by the schema."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(merge(REQUIRED_VALUES, override))
    assert message in str(caught.value)


def test_keda_scales_on_the_lag_of_every_topic_when_there_are_several() -> None:
    """With kafkaTopics, the KEDA trigger names no topic: KEDA then sums the group's topics."""

    def trigger(values: dict[str, Any]) -> dict[str, Any]:
        with_keda = merge(values, {"keda": {"enabled": True}})
        scaled = only(manifests_of(render_files(with_keda)), "ScaledObject")
        metadata: dict[str, Any] = scaled["spec"]["triggers"][0]["metadata"]
        return metadata

    assert trigger(REQUIRED_VALUES)["topic"] == "crm.customers"
    assert "topic" not in trigger(INLINE_VALUES)
