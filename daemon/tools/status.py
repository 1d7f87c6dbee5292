"""`pivotal-sync status`: the one screen an operator looks at first, and the reads behind it.

Everything here is read-only and comes from where the daemon keeps its truth:

- Postgres (`CheckpointStore`): outcomes, dead letters, last checkpoint — the daemon's own
  tables;
- Kafka (`partition_lag`): per partition, the group's committed offset against the high
  watermark;
- the daemon's `/metrics` (`quota`), when one answers: the rate limiter's view of the quota.
  Production has no other source for it (the Pivotal API Keys page is for people).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka.errors import KafkaError

from daemon.checkpoints import StoreSummary
from daemon.config import Settings
from daemon.kafka_clients import KafkaClients
from daemon.tools.common import (
    EXIT_OK,
    open_store,
    run_command,
    settings,
)
from daemon.version import version

METRICS_TIMEOUT_SECONDS = 2.0
# Fetches needed to learn every partition's high watermark (one is usually enough).
HIGHWATER_FETCH_ATTEMPTS = 5
HIGHWATER_FETCH_TIMEOUT_MS = 500

QUOTA_GAUGES = {
    "pivotal_sync_ratelimit_limit": "limit",
    "pivotal_sync_ratelimit_remaining": "remaining",
    "pivotal_sync_ratelimit_window_seconds": "window_seconds",
    "pivotal_sync_ratelimit_rate_per_second": "rate_per_second",
    "pivotal_sync_ratelimit_tokens": "tokens",
    "pivotal_sync_api_requests_in_flight": "in_flight",
}


# ---------------------------------------------------------------------------------------------
# Kafka: lag per partition.


@dataclass(frozen=True, kw_only=True, slots=True)
class PartitionLag:
    partition: int
    topic: str = ""
    committed: int | None  # None: the group has committed nothing here yet
    high_watermark: int | None  # None: unknown (the broker did not say)
    lag: int | None


async def partition_lag(kafka: KafkaClients, topic: str, group_id: str) -> list[PartitionLag]:
    """Committed offset of the group vs the high watermark, per partition of `topic`.

    The high watermark comes from a fetch response (`highwater()`), which every broker gets
    right; `end_offsets()` is only the fallback (tansu answers it wrongly after multi-record
    batches). The consumer has no group and commits nothing: it cannot disturb the daemon.
    """
    from aiokafka import TopicPartition  # noqa: PLC0415

    consumer = kafka.consumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=1024,
        client_id="pivotal-sync-status",
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads metadata
        numbers = sorted(consumer.partitions_for_topic(topic) or ())
        partitions = [TopicPartition(topic, p) for p in numbers]
        if not partitions:
            return []
        committed = await committed_offsets(kafka, group_id, topic, numbers)
        consumer.assign(partitions)
        beginning = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(committed.get(tp.partition, -1), beginning[tp]))
        highs = await _high_watermarks(consumer, partitions)
    finally:
        await consumer.stop()
    result = []
    for tp in partitions:
        done = committed.get(tp.partition, -1)
        high = highs.get(tp.partition)
        start = done if done >= 0 else beginning[tp]
        result.append(
            PartitionLag(
                partition=tp.partition,
                topic=topic,
                committed=done if done >= 0 else None,
                high_watermark=high,
                lag=None if high is None else max(0, high - start),
            )
        )
    return result


async def _high_watermarks(consumer: Any, partitions: list[Any]) -> dict[int, int]:
    highs: dict[int, int] = {}
    for _ in range(HIGHWATER_FETCH_ATTEMPTS):
        await consumer.getmany(*partitions, timeout_ms=HIGHWATER_FETCH_TIMEOUT_MS, max_records=1)
        for tp in partitions:
            high = consumer.highwater(tp)
            if high is not None:
                highs[tp.partition] = high
        if len(highs) == len(partitions):
            return highs
    ends = await consumer.end_offsets([tp for tp in partitions if tp.partition not in highs])
    return highs | {tp.partition: end for tp, end in ends.items()}


async def committed_offsets(
    kafka: KafkaClients, group_id: str, topic: str, partitions: Sequence[int]
) -> dict[int, int]:
    """What the group committed per partition (-1: nothing yet)."""
    from aiokafka import TopicPartition  # noqa: PLC0415

    admin = kafka.admin()
    await admin.start()
    try:
        # Partitions spelled out: some brokers (tansu) answer nothing without them.
        answer = await admin.list_consumer_group_offsets(
            group_id, partitions=[TopicPartition(topic, p) for p in partitions]
        )
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in answer.items()}


# ---------------------------------------------------------------------------------------------
# The daemon's /metrics: quota state.


def metrics_endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else f"{url}/metrics"


async def scrape(url: str | None) -> dict[str, float] | None:
    """Every sample of a daemon's /metrics as `name{labels}` → value; None if none answers."""
    if not url:
        return None
    try:
        async with httpx.AsyncClient(timeout=METRICS_TIMEOUT_SECONDS) as client:
            response = await client.get(metrics_endpoint(url))
            response.raise_for_status()
    except httpx.HTTPError:
        return None
    return parse_samples(response.text)


def parse_samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition as `name{label="v",...}` → value."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _total(samples: Mapping[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.partition("{")[0] == name)


async def daemon_requests(url: str | None) -> float | None:
    """The daemon's pivotal_sync_api_requests_total, all labels summed; None if unknown."""
    samples = await scrape(url)
    return None if samples is None else _total(samples, "pivotal_sync_api_requests_total")


def daemon_version_from(samples: Mapping[str, float]) -> str | None:
    """The version label of pivotal_sync_build_info, if the daemon exports it."""
    for key in samples:
        name, _, labels = key.partition("{")
        if name == "pivotal_sync_build_info":
            found = re.search(r'(?:^|,)version="([^"]*)"', labels)
            return found.group(1) if found else None
    return None


def quota_from(samples: Mapping[str, float]) -> dict[str, Any]:
    quota: dict[str, Any] = {
        label: samples[name] for name, label in QUOTA_GAUGES.items() if name in samples
    }
    quota["requests_total"] = _total(samples, "pivotal_sync_api_requests_total")
    quota["rate_limited_total"] = _total(samples, "pivotal_sync_api_rate_limited_total")
    quota["paused"] = sorted(
        key.partition('reason="')[2].rstrip('"}')
        for key, value in samples.items()
        if key.startswith("pivotal_sync_paused{") and value
    )
    return quota


# ---------------------------------------------------------------------------------------------
# The report.


@dataclass
class StatusReport:
    topic: str
    group: str
    partitions: list[PartitionLag] = field(default_factory=list)
    kafka_error: str | None = None
    # None: no daemon metrics answered (quota unknown).
    quota: dict[str, Any] | None = None
    metrics_url: str | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    finished_total: int = 0
    last_checkpoint: datetime | None = None
    dead_letters: dict[str, int] = field(default_factory=dict)
    dead_letter_states: dict[str, int] = field(default_factory=dict)
    entities: dict[str, int] = field(default_factory=dict)
    migrations_pending: list[str] = field(default_factory=list)
    # This command's version, and the running daemon's (from its build-info metric).
    version: str = field(default_factory=version)
    daemon_version: str | None = None

    @property
    def total_lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return None if not lags or None in lags else sum(lag for lag in lags if lag is not None)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_checkpoint"] = _iso(self.last_checkpoint)
        data["total_lag"] = self.total_lag
        return data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def default_metrics_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.http_port}/metrics"


async def collect(settings: Settings, metrics_url: str | None) -> StatusReport:
    """Gather the whole status; Kafka and the metrics endpoint may be down, Postgres may not."""
    url = metrics_url or default_metrics_url(settings)
    report = StatusReport(topic=", ".join(settings.topics), group=settings.kafka_group_id)
    kafka = KafkaClients(settings)
    lag = asyncio.create_task(_lags(kafka, settings))
    samples = await scrape(url)
    if samples is not None:
        report.quota, report.metrics_url = quota_from(samples), metrics_endpoint(url)
        report.daemon_version = daemon_version_from(samples)
    async with await open_store(settings) as store:
        summary = await store.summary()
        report.dead_letter_states = await store.dead_letter_states()
    _fill_summary(report, summary)
    try:
        report.partitions = await asyncio.wait_for(lag, 30)
    # Kafka down is a status to show, not a crash.
    except (KafkaError, OSError, TimeoutError) as exc:
        # aiokafka only says "Unable to bootstrap"; the diagnosis names the setting to fix.
        report.kafka_error = await kafka.diagnose() or f"{type(exc).__name__}: {exc}"[:200]
    return report


async def _lags(kafka: KafkaClients, settings: Settings) -> list[PartitionLag]:
    found: list[PartitionLag] = []
    for topic in settings.topics:
        found += await partition_lag(kafka, topic, settings.kafka_group_id)
    return found


def _fill_summary(report: StatusReport, summary: StoreSummary) -> None:
    report.outcomes = dict(summary.outcomes)
    report.finished_total = summary.finished_total
    report.last_checkpoint = summary.last_checkpoint
    report.dead_letters = dict(summary.dead_letters)
    report.entities = dict(summary.entities)
    report.migrations_pending = list(summary.migrations_pending)


def render(report: StatusReport, now: datetime | None = None) -> str:
    """The report as text for a terminal."""
    several = "," in report.topic
    daemon = report.daemon_version or "unknown (no daemon metrics answered)"
    lines = [
        f"pivotal-sync {report.version} · daemon {daemon}",
        f"{'topics' if several else 'topic'} {report.topic} · group {report.group}",
        "",
        "consumer lag",
    ]
    if report.kafka_error:
        lines.append(f"  unknown: {report.kafka_error}")
    for p in report.partitions:
        committed = "-" if p.committed is None else str(p.committed)
        high = "?" if p.high_watermark is None else str(p.high_watermark)
        lag = "?" if p.lag is None else str(p.lag)
        where = f"{p.topic} [{p.partition}]" if several else f"partition {p.partition:<3}"
        lines.append(f"  {where} committed {committed:>8}  end {high:>8}  lag {lag}")
    if report.partitions:
        total = report.total_lag
        lines.append(f"  total lag {'?' if total is None else total}")
    lines += ["", "quota"]
    lines += _quota_lines(report)
    lines += ["", "checkpoints"]
    lines.append(f"  finished events {report.finished_total}")
    lines.append(f"  last checkpoint {_ago(report.last_checkpoint, now)}")
    for outcome, count in sorted(report.outcomes.items()):
        if count:
            lines.append(f"  {outcome:<15} {count}")
    entities = " · ".join(f"{kind}s {n}" for kind, n in sorted(report.entities.items()))
    lines.append(f"  live entities   {entities}")
    lines += ["", "dead letters"]
    states = report.dead_letter_states
    lines.append(
        f"  {sum(report.dead_letters.values())} in total: {states.get('open', 0)} open, "
        f"{states.get('retrying', 0)} retrying, {states.get('resolved', 0)} resolved"
    )
    for reason, count in sorted(report.dead_letters.items(), key=lambda item: -item[1]):
        lines.append(f"  {reason:<24} {count}")
    if report.migrations_pending:
        lines += ["", f"migrations pending: {', '.join(report.migrations_pending)}"]
    return "\n".join(lines)


def _quota_lines(report: StatusReport) -> list[str]:
    quota = report.quota
    if quota is None:
        return ["  unknown (no daemon metrics answered; pass --metrics-url URL)"]
    limit, window = quota.get("limit"), quota.get("window_seconds")
    lines = [f"  from {report.metrics_url}"]
    if limit:
        lines.append(
            f"  limit {limit:g} per {window or 60:g} s, remaining {quota.get('remaining', 0):g}"
        )
    else:
        lines.append("  limit not learned yet (no response from Pivotal so far)")
    rate = quota.get("rate_per_second")
    if rate is not None:
        lines.append(f"  sending at {rate * 60:.1f}/min, {quota.get('tokens', 0):.1f} tokens")
    lines.append(
        f"  requests {quota['requests_total']:g} · 429s {quota['rate_limited_total']:g}"
        f" · in flight {quota.get('in_flight', 0):g}"
    )
    lines.append(f"  paused: {', '.join(quota['paused']) or 'no'}")
    return lines


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    with contextlib.suppress(ValueError):
        return f"{_iso(moment)} ({_duration(seconds)} ago)"
    return str(_iso(moment))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def to_json(report: StatusReport) -> str:
    return json.dumps(report.as_json(), indent=2, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# The command: arguments, run.


def run(args: argparse.Namespace) -> int:
    config = settings()

    async def run() -> int:
        report = await collect(config, args.metrics_url)
        print(to_json(report) if args.json else render(report))
        return EXIT_OK

    return run_command(run())


def add_parser(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register `status`."""
    status = commands.add_parser("status", help="lag, quota, checkpoints and dead letters")
    status.add_argument(
        "--metrics-url",
        metavar="URL",
        help="a running daemon's /metrics (default: localhost on PIVOTAL_SYNC_HTTP_PORT)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=run)
