"""Metric names: what the daemon exports (static, from its registry) and what a query uses."""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import generate_latest

from daemon.metrics import PREFIX, Metrics

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# A metric name in PromQL: our prefix, not followed by more name characters; recording rules
# (with a colon, e.g. pivotal_sync:backlog_drain_threshold_seconds) are not daemon metrics.
NAME = re.compile(rf"(?<![\w:]){PREFIX}_[a-zA-Z0-9_]+(?![\w:])")


def exported_metric_names() -> set[str]:
    """Every sample name a scrape of a fresh daemon can contain, from the exposition text."""
    names: set[str] = set()
    text = generate_latest(Metrics().registry).decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            if family.endswith("_created"):
                continue
            base = family.removesuffix("_total")
            names.update(base + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


def referenced_metric_names(exprs: Iterable[str]) -> set[str]:
    return {name for expr in exprs for name in NAME.findall(expr)}
