"""Every metric pivotal-sync exports, declared once.

Names follow Prometheus conventions (`pivotal_sync_` prefix, base units, `_total` counters).
Labels are bounded: never an event id, entity id or key. Label sets that are known in advance
are created in `Metrics.__init__`, so their series exist at zero from the first scrape (an
alert on `increase(...)` needs the zero).

A private `CollectorRegistry` per instance keeps tests independent of each other; it also
carries the standard `process_*` and `python_info` collectors (CPU, memory, file descriptors),
which only the default registry would have otherwise. `_created` series are turned off: they
were 29 % of a scrape and nothing reads them (counter resets are visible without them).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from daemon.events import EntityKind
from daemon.limits import LIMIT_REASONS
from daemon.outcomes import Outcome
from daemon.version import python_version, version

disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "pivotal_sync"
METHODS = ("GET", "POST", "PATCH", "DELETE")
ENDPOINTS = ("customers", "contacts", "onboardings", "me")
STATUS_CLASSES = ("2xx", "4xx", "429", "5xx", "error")
PAUSE_REASONS = ("auth", "server_errors", "internal_errors")
# Every reason the daemon itself gives a dead letter, created at zero so `increase()` sees the
# first one. (http_<status> covers the 4xx Pivotal documents.)
DEAD_LETTER_REASONS = (
    "invalid_json",
    "not_cloudevent",
    "unknown_type",
    "missing_customer",
    "missing_key",
    "invalid_field",
    "missing_field",
    "parent_missing",
    "deleted_in_pivotal",
    "slug_taken",
    "bad_response",
    "internal_error",
    "http_400",
    "http_404",
    "http_409",
    *LIMIT_REASONS,
)
# Latency buckets for a SaaS API: tens of ms to the 10 s client timeout.
DURATION_BUCKETS_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# One quota ledger round trip: a local Postgres answers in about a millisecond.
LEDGER_BUCKETS_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CHECKPOINT_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def status_class(status: int | None) -> str:
    """Map an HTTP status (None: no response at all) to the bounded `status_class` label."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx" if 200 <= status < 600 else "error"


class Metrics:
    """The daemon's metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Collectors without names (process_*, python_info) can then be asked for by name too
        # (`/metrics?name[]=process_cpu_seconds_total`, daemon/server.py).
        self.registry = (
            registry
            if registry is not None
            else CollectorRegistry(support_collectors_without_names=True)
        )
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            f"{PREFIX}_build_info",
            "Always 1; the labels say which build is running.",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(version=version(), python_version=python_version()).set(1)
        self.events_consumed = Counter(
            f"{PREFIX}_events_consumed",
            "Kafka records consumed.",
            ["topic", "partition"],
            registry=r,
        )
        self.events_finished = Counter(
            f"{PREFIX}_events_finished",
            "Events finished, by outcome and entity kind.",
            ["outcome", "kind"],
            registry=r,
        )
        self.requests = Counter(
            f"{PREFIX}_api_requests",
            "Requests sent to Pivotal, by method, endpoint and status class.",
            ["method", "endpoint", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Pivotal request latency.",
            ["method", "endpoint"],
            buckets=DURATION_BUCKETS_SECONDS,
            registry=r,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_api_rate_limited", "429 responses received from Pivotal.", registry=r
        )
        self.retry_after = Counter(
            f"{PREFIX}_api_retry_after_seconds",
            "Seconds of Retry-After Pivotal asked us to wait (sum over 429s).",
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_api_retries", "Requests retried, by reason.", ["reason"], registry=r
        )
        self.internal_errors = Counter(
            f"{PREFIX}_internal_errors",
            "Unexpected exceptions while handling an event (a bug, never the network).",
            registry=r,
        )
        self.bucket_rate = Gauge(
            f"{PREFIX}_ratelimit_rate_per_second",
            "Current token bucket rate (requests per second).",
            registry=r,
        )
        self.bucket_tokens = Gauge(
            f"{PREFIX}_ratelimit_tokens", "Tokens currently in the bucket.", registry=r
        )
        self.learned_limit = Gauge(
            f"{PREFIX}_ratelimit_limit",
            "Requests per window the key is allowed, as learned from X-RateLimit-Limit.",
            registry=r,
        )
        self.window_seconds = Gauge(
            f"{PREFIX}_ratelimit_window_seconds",
            "Length of Pivotal's rate-limit window in seconds.",
            registry=r,
        )
        self.last_remaining = Gauge(
            f"{PREFIX}_ratelimit_remaining",
            "X-RateLimit-Remaining from the last response.",
            registry=r,
        )
        self.concurrency_limit = Gauge(
            f"{PREFIX}_api_concurrency_limit",
            "Requests allowed in flight now (adapts to latency).",
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_api_requests_in_flight", "Requests currently in flight.", registry=r
        )
        self.paused = Gauge(
            f"{PREFIX}_paused",
            "1 while sending is paused by a systemic failure, by reason.",
            ["reason"],
            registry=r,
        )
        self.lanes_active = Gauge(
            f"{PREFIX}_lanes", "Customer lanes holding waiting or running work.", registry=r
        )
        self.pending_events = Gauge(
            f"{PREFIX}_pending_events",
            "Events held in memory (lane queues plus in flight).",
            registry=r,
        )
        self.coalesced = Counter(
            f"{PREFIX}_events_coalesced",
            "Events merged into another event's request (requests saved).",
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters", "Events dead-lettered, by reason.", ["reason"], registry=r
        )
        self.checkpoint_duration = Histogram(
            f"{PREFIX}_checkpoint_write_duration_seconds",
            "Duration of one checkpoint batch transaction.",
            buckets=CHECKPOINT_BUCKETS_SECONDS,
            registry=r,
        )
        self.checkpoint_failures = Counter(
            f"{PREFIX}_checkpoint_write_failures", "Checkpoint batches that failed.", registry=r
        )
        self.checkpoints_pruned = Counter(
            f"{PREFIX}_checkpoints_pruned",
            "Checkpoint rows deleted by retention (PIVOTAL_SYNC_CHECKPOINT_RETENTION_DAYS).",
            registry=r,
        )
        self.last_checkpoint = Gauge(
            f"{PREFIX}_checkpoint_last_success_timestamp_seconds",
            "Unix time of the last successful checkpoint write.",
            registry=r,
        )
        self.lag_records = Gauge(
            f"{PREFIX}_consumer_lag_records",
            "Records between the committed position and the high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            f"{PREFIX}_consumer_lag_seconds",
            "Seconds of rate-limit budget needed to drain the lag at the current rate.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            f"{PREFIX}_consumer_assigned_partitions",
            "Partitions currently assigned to this consumer.",
            registry=r,
        )
        self.ledger_call_duration = Histogram(
            f"{PREFIX}_quota_ledger_call_duration_seconds",
            "Duration of one quota ledger round trip (reserve slots, report finished requests).",
            buckets=LEDGER_BUCKETS_SECONDS,
            registry=r,
        )
        self.ledger_fallbacks = Counter(
            f"{PREFIX}_quota_ledger_fallbacks",
            "Times the quota ledger was out or slow and the header-based limiter took over.",
            registry=r,
        )
        self.ledger_in_use = Gauge(
            f"{PREFIX}_quota_ledger_in_use",
            "1 while slots come from the shared quota ledger, 0 in fallback or when disabled.",
            registry=r,
        )
        self.ledger_replicas = Gauge(
            f"{PREFIX}_quota_ledger_replicas",
            "Replicas alive on the API key, as the quota ledger saw at the last call.",
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when /readyz answers ready.", registry=r)
        self._create_known_series()

    def _create_known_series(self) -> None:
        for outcome in Outcome:
            for kind in EntityKind:
                self.events_finished.labels(outcome=outcome.value, kind=kind.value)
            self.events_finished.labels(outcome=outcome.value, kind="unknown")
        for method in METHODS:
            for endpoint in ENDPOINTS:
                self.request_duration.labels(method=method, endpoint=endpoint)
                for status in STATUS_CLASSES:
                    self.requests.labels(method=method, endpoint=endpoint, status_class=status)
        for reason in PAUSE_REASONS:
            self.paused.labels(reason=reason)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for reason in ("rate_limited", "server_error", "network", "conflict_in_flight"):
            self.retries.labels(reason=reason)
