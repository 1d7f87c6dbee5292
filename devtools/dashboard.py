"""The Grafana dashboard, as a small program: one function per panel, committed as sorted JSON.

`python -m devtools.dashboard` writes `deploy/grafana/pivotal-sync.json` and the copy the Helm
chart ships (`helm/pivotal-sync/files/grafana/`); `--check` fails when either is out of date.
Queries use only the metric names declared in `daemon.metrics` (tests/deploy checks it) and are
templated on the datasource, the namespace, the job (one per release: a ServiceMonitor names the
job after the release's Service) and the pod, so one dashboard serves every release.

Plain dicts rather than grafana-foundation-sdk: the panels need nothing the JSON model does not
already say, and the project gains no dependency for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.metrics import PREFIX

Panel = dict[str, Any]

TITLE = "pivotal-sync"
UID = "pivotal-sync"
OUTPUT_PATHS = (
    Path("deploy/grafana/pivotal-sync.json"),
    Path("helm/pivotal-sync/files/grafana/pivotal-sync.json"),
)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every query is scoped to the selected namespace(s), job(s) and pod(s).
SCOPE = 'namespace=~"$namespace", job=~"$job", pod=~"$pod"'
RATE = "$__rate_interval"
FULL_WIDTH = 24
HALF_WIDTH = 12
THIRD_WIDTH = 8
PANEL_HEIGHT = 8


def metric(name: str, matchers: str = "") -> str:
    """A selector for `pivotal_sync_<name>` scoped to the dashboard's namespace and pod."""
    extra = f", {matchers}" if matchers else ""
    return f"{PREFIX}_{name}{{{SCOPE}{extra}}}"


def target(expr: str, legend: str, ref_id: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref_id}


def timeseries(
    title: str,
    description: str,
    targets: Sequence[tuple[str, str]],
    *,
    unit: str,
    width: int = HALF_WIDTH,
    stack: bool = False,
) -> Panel:
    """A time series panel; `targets` are (expr, legend) pairs, refIds assigned A, B, ..."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": width},
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def state_timeline(title: str, description: str, targets: Sequence[tuple[str, str]]) -> Panel:
    """A state timeline for 0/1 gauges (ready, paused), coloured by meaning."""
    panel = timeseries(title, description, targets, unit="none", width=THIRD_WIDTH)
    panel["type"] = "state-timeline"
    panel["options"] = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8}
    return panel


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"h": 1}}


# --- Throughput and outcomes ----------------------------------------------------------------


def throughput_panel() -> Panel:
    return timeseries(
        "Events consumed and finished",
        "Records read from Kafka and events finished, per second. Finished trails consumed "
        "while a backlog drains at the rate limit.",
        [
            (f"sum(rate({metric('events_consumed_total')}[{RATE}]))", "consumed"),
            (f"sum(rate({metric('events_finished_total')}[{RATE}]))", "finished"),
        ],
        unit="ops",
    )


def outcomes_panel() -> Panel:
    return timeseries(
        "Outcomes",
        "How events finished: sent, coalesced into another request, skipped (duplicate, "
        "stale, superseded, noop) or dead-lettered.",
        [
            (
                f"sum by (outcome) (rate({metric('events_finished_total')}[{RATE}]))",
                "{{outcome}}",
            )
        ],
        unit="ops",
        stack=True,
    )


def requests_panel() -> Panel:
    return timeseries(
        "Pivotal requests by status class",
        "Requests sent to Pivotal. 429 should stay near zero; 5xx and error mean Pivotal or "
        "the network is failing.",
        [
            (
                f"sum by (status_class) (rate({metric('api_requests_total')}[{RATE}]))",
                "{{status_class}}",
            )
        ],
        unit="reqps",
        stack=True,
    )


def retries_panel() -> Panel:
    return timeseries(
        "Retries by reason",
        "Requests retried. A steady stream of rate_limited retries means the bucket is "
        "running ahead of the key's real limit (for example replicas sharing one key).",
        [(f"sum by (reason) (rate({metric('api_retries_total')}[{RATE}]))", "{{reason}}")],
        unit="reqps",
    )


# --- Quota ----------------------------------------------------------------------------------


def quota_use_panel() -> Panel:
    return timeseries(
        "Quota use: request rate vs learned limit",
        "Requests per second sent (all pods) against the key's limit learned from "
        "X-RateLimit-Limit, and the token bucket's current rate. Sent close to the limit "
        "with no 429s is the goal.",
        [
            (f"sum(rate({metric('api_requests_total')}[{RATE}]))", "sent"),
            (
                f"max({metric('ratelimit_limit')}) / max({metric('ratelimit_window_seconds')})",
                "learned limit",
            ),
            (f"sum({metric('ratelimit_rate_per_second')})", "bucket rate (sum of pods)"),
        ],
        unit="reqps",
        width=THIRD_WIDTH,
    )


def remaining_panel() -> Panel:
    return timeseries(
        "Remaining and tokens",
        "X-RateLimit-Remaining from the last response, and tokens in each pod's bucket.",
        [
            (f"min by (pod) ({metric('ratelimit_remaining')})", "remaining {{pod}}"),
            (f"max by (pod) ({metric('ratelimit_tokens')})", "tokens {{pod}}"),
        ],
        unit="short",
        width=THIRD_WIDTH,
    )


def rate_limited_panel() -> Panel:
    throttled = metric("api_requests_total", 'status_class="429"')
    return timeseries(
        "429s and Retry-After",
        "429 responses per second, the share of requests they represent, and the seconds of "
        "Retry-After Pivotal asked for per second of wall time.",
        [
            (f"sum(rate({metric('api_rate_limited_total')}[{RATE}]))", "429/s"),
            (
                f"sum(rate({throttled}[{RATE}]))"
                f" / sum(rate({metric('api_requests_total')}[{RATE}]))",
                "429 ratio",
            ),
            (
                f"sum(rate({metric('api_retry_after_seconds_total')}[{RATE}]))",
                "retry-after s/s",
            ),
        ],
        unit="short",
        width=THIRD_WIDTH,
    )


# --- Latency --------------------------------------------------------------------------------


def latency_panel() -> Panel:
    bucket = metric("api_request_duration_seconds_bucket")
    return timeseries(
        "Pivotal request latency",
        "Percentiles of Pivotal request duration, from the histogram.",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate({bucket}[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.9, 0.99)
        ],
        unit="s",
    )


def in_flight_panel() -> Panel:
    return timeseries(
        "Requests in flight vs concurrency limit",
        "Requests in flight and the adaptive concurrency limit, per pod.",
        [
            (f"sum by (pod) ({metric('api_requests_in_flight')})", "in flight {{pod}}"),
            (f"max by (pod) ({metric('api_concurrency_limit')})", "limit {{pod}}"),
        ],
        unit="short",
    )


# --- Backlog --------------------------------------------------------------------------------


def lag_records_panel() -> Panel:
    return timeseries(
        "Consumer lag (records)",
        "Records between the committed offset and the high watermark, per partition.",
        [
            (
                f"sum by (topic, partition) ({metric('consumer_lag_records')})",
                "{{topic}} [{{partition}}]",
            )
        ],
        unit="short",
        stack=True,
    )


def time_to_drain_panel() -> Panel:
    return timeseries(
        "Time to drain the backlog",
        "Seconds of rate-limit budget each pod needs to drain its partitions' lag at the "
        "current rate. The alert PivotalSyncBacklogWillNotDrain fires above its threshold.",
        [
            (f"sum by (pod) ({metric('consumer_lag_seconds')})", "{{pod}}"),
        ],
        unit="s",
    )


# --- Lanes and coalescing -------------------------------------------------------------------


def lanes_panel() -> Panel:
    return timeseries(
        "Lanes and pending events",
        "Customer lanes holding work and events held in memory (lane queues plus in flight).",
        [
            (f"sum by (pod) ({metric('lanes')})", "lanes {{pod}}"),
            (f"sum by (pod) ({metric('pending_events')})", "pending {{pod}}"),
        ],
        unit="short",
    )


def coalescing_panel() -> Panel:
    return timeseries(
        "Requests saved by coalescing",
        "Events merged into another event's request, per second: each is a request not spent.",
        [(f"sum(rate({metric('events_coalesced_total')}[{RATE}]))", "coalesced")],
        unit="ops",
    )


# --- Dead letters ---------------------------------------------------------------------------


def dead_letters_panel() -> Panel:
    return timeseries(
        "Dead letters by reason",
        "Events parked in the dead-letter table, by reason. Look them up in Postgres.",
        [
            (
                f"sum by (reason) (increase({metric('dead_letters_total')}[{RATE}]))",
                "{{reason}}",
            )
        ],
        unit="short",
        width=FULL_WIDTH,
        stack=True,
    )


# --- Checkpoints ----------------------------------------------------------------------------


def checkpoint_duration_panel() -> Panel:
    bucket = metric("checkpoint_write_duration_seconds_bucket")
    return timeseries(
        "Checkpoint write duration",
        "Duration of one checkpoint batch transaction in Postgres.",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate({bucket}[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
        width=THIRD_WIDTH,
    )


def checkpoint_failures_panel() -> Panel:
    return timeseries(
        "Checkpoint write failures",
        "Checkpoint batches that failed. Offsets are not committed past unwritten checkpoints.",
        [
            (
                f"sum by (pod) (rate({metric('checkpoint_write_failures_total')}[{RATE}]))",
                "{{pod}}",
            )
        ],
        unit="ops",
        width=THIRD_WIDTH,
    )


def checkpoint_age_panel() -> Panel:
    return timeseries(
        "Time since last checkpoint",
        "Seconds since each pod last wrote a checkpoint batch. Grows while idle; worrying "
        "only while there is lag.",
        [
            (
                f"time() - max by (pod) ({metric('checkpoint_last_success_timestamp_seconds')}"
                " > 0)",
                "{{pod}}",
            )
        ],
        unit="s",
        width=THIRD_WIDTH,
    )


# --- Shared quota ledger --------------------------------------------------------------------


def ledger_latency_panel() -> Panel:
    bucket = metric("quota_ledger_call_duration_seconds_bucket")
    return timeseries(
        "Quota ledger round trip",
        "Duration of one call to the shared quota ledger in Postgres (reserve slots, report "
        "finished requests). Above 1 s the pod falls back to the header-based limiter.",
        [
            (
                f"histogram_quantile({q}, sum by (le) (rate({bucket}[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
        width=THIRD_WIDTH,
    )


def ledger_in_use_panel() -> Panel:
    return state_timeline(
        "Quota ledger in use",
        "1 while a pod takes its slots from the shared ledger; 0 while Postgres is out or "
        "slow (the header-based limiter paces it) or the ledger is disabled "
        "(PIVOTAL_SYNC_QUOTA_LEDGER).",
        [(f"max by (pod) ({metric('quota_ledger_in_use')})", "{{pod}}")],
    )


def ledger_replicas_panel() -> Panel:
    return timeseries(
        "Replicas on the key",
        "Replicas alive on the API key as the ledger sees them, and fallbacks to the "
        "header-based limiter.",
        [
            (f"max({metric('quota_ledger_replicas')})", "replicas"),
            (
                f"sum(increase({metric('quota_ledger_fallbacks_total')}[{RATE}]))",
                "fallbacks",
            ),
        ],
        unit="short",
        width=THIRD_WIDTH,
    )


# --- State ----------------------------------------------------------------------------------


def ready_panel() -> Panel:
    return state_timeline(
        "Ready",
        "1 when /readyz answers ready: connected to Kafka and Postgres, not paused by auth.",
        [(f"max by (pod) ({metric('ready')})", "{{pod}}")],
    )


def paused_panel() -> Panel:
    return state_timeline(
        "Paused",
        "1 while sending is paused by a systemic failure: auth (the key is refused) or "
        "server_errors (sustained 5xx or network down).",
        [(f"max by (pod, reason) ({metric('paused')})", "{{pod}} {{reason}}")],
    )


def _of_daemons(expr: str) -> str:
    """`expr` over process_* series, kept to the selected daemons' pods.

    process_* carry no prefix, so other programs in the namespace export them too; the join on
    pivotal_sync_ready keeps only pivotal-sync's.
    """
    return f"{expr} and on (namespace, job, pod) {metric('ready')}"


def cpu_panel() -> Panel:
    return timeseries(
        "CPU",
        "CPU seconds per second used by each daemon process (process_cpu_seconds_total).",
        [(_of_daemons(f"rate(process_cpu_seconds_total{{{SCOPE}}}[{RATE}])"), "{{pod}}")],
        unit="percentunit",
        width=THIRD_WIDTH,
    )


def memory_panel() -> Panel:
    return timeseries(
        "Memory",
        "Resident memory of each daemon process (process_resident_memory_bytes); the pod's "
        "limit is resources.limits.memory.",
        [(_of_daemons(f"process_resident_memory_bytes{{{SCOPE}}}"), "{{pod}}")],
        unit="bytes",
        width=THIRD_WIDTH,
    )


def open_files_panel() -> Panel:
    return timeseries(
        "Open file descriptors",
        "File descriptors each daemon process holds (process_open_fds): sockets to Kafka, "
        "Postgres and Pivotal.",
        [(_of_daemons(f"process_open_fds{{{SCOPE}}}"), "{{pod}}")],
        unit="short",
        width=THIRD_WIDTH,
    )


def assigned_panel() -> Panel:
    return timeseries(
        "Assigned partitions",
        "Partitions assigned to each pod. Pods beyond the partition count sit idle.",
        [(f"sum by (pod) ({metric('consumer_assigned_partitions')})", "{{pod}}")],
        unit="short",
        width=THIRD_WIDTH,
        stack=True,
    )


def sections() -> list[tuple[str, list[Panel]]]:
    """The dashboard, top to bottom: state first, then what an on-call person asks next."""
    return [
        ("State", [ready_panel(), paused_panel(), assigned_panel()]),
        ("Throughput", [throughput_panel(), outcomes_panel(), requests_panel(), retries_panel()]),
        ("Quota", [quota_use_panel(), remaining_panel(), rate_limited_panel()]),
        (
            "Shared quota ledger",
            [ledger_latency_panel(), ledger_in_use_panel(), ledger_replicas_panel()],
        ),
        ("Latency", [latency_panel(), in_flight_panel()]),
        ("Backlog", [lag_records_panel(), time_to_drain_panel()]),
        ("Lanes and coalescing", [lanes_panel(), coalescing_panel()]),
        ("Dead letters", [dead_letters_panel()]),
        (
            "Checkpoints",
            [checkpoint_duration_panel(), checkpoint_failures_panel(), checkpoint_age_panel()],
        ),
        ("Process", [cpu_panel(), memory_panel(), open_files_panel()]),
    ]


def layout(groups: list[tuple[str, list[Panel]]]) -> list[Panel]:
    """Place rows and panels left to right, wrapping at the dashboard's 24 columns."""
    panels: list[Panel] = []
    y = 0
    for title, members in groups:
        heading = row(title)
        heading["gridPos"] = {"h": 1, "w": FULL_WIDTH, "x": 0, "y": y}
        panels.append(heading)
        y += 1
        x = 0
        for panel in members:
            width = panel["gridPos"]["w"]
            if x + width > FULL_WIDTH:
                x, y = 0, y + PANEL_HEIGHT
            panel["gridPos"] = {"h": PANEL_HEIGHT, "w": width, "x": x, "y": y}
            panels.append(panel)
            x += width
        y += PANEL_HEIGHT
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
    return panels


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value variable over a label; "All" matches series without the label too."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def variables() -> list[dict[str, Any]]:
    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        query_variable("namespace", "Namespace", f"label_values({PREFIX}_ready, namespace)"),
        query_variable(
            "job",
            "Job (release)",
            f'label_values({PREFIX}_ready{{namespace=~"$namespace"}}, job)',
        ),
        query_variable(
            "pod",
            "Pod",
            f'label_values({PREFIX}_ready{{namespace=~"$namespace", job=~"$job"}}, pod)',
        ),
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": TITLE,
        "description": "pivotal-sync: Kafka → Pivotal sync within the API's rate limit.",
        "tags": ["pivotal-sync"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": layout(sections()),
    }


def render() -> str:
    """The dashboard as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the panels (variables hold `label_values(...)` instead)."""
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a committed copy differs")
    parser.add_argument("--root", type=Path, default=Path(), help="repository root")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUT_PATHS if _read(args.root / p) != text]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run python -m devtools.dashboard", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        (args.root / path).parent.mkdir(parents=True, exist_ok=True)
        (args.root / path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
