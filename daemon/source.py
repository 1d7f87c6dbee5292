"""The Kafka side: a consumer group member with manual offsets.

Auto-commit is off. Offsets are committed only from `Progress.committable()`, i.e. up to the
first event that is not finished *and durable in Postgres*. Fetching pauses while the pipeline
holds `max_pending` events whole or `max_merged` merged into waiting requests (pause/resume
keeps the group membership, unlike not polling), and a rebalance first lets the revoked
partitions' running work finish (bounded), flushes checkpoints and commits, then drops their
waiting events: the next owner starts exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from daemon import signals
from daemon.backoff import Backoff, Stopped, retry
from daemon.config import Settings
from daemon.events import RecordRef
from daemon.kafka_clients import KafkaClients
from daemon.metrics import Metrics
from daemon.progress import Progress

FETCH_TIMEOUT_MS = 200
FETCH_MAX_RECORDS = 500
COMMIT_INTERVAL_SECONDS = 1.0
LAG_INTERVAL_SECONDS = 5.0
# The broker check (a metadata request) and each step of closing wait at most this long.
BROKER_CHECK_TIMEOUT_SECONDS = 5.0
CLOSE_STEP_TIMEOUT_SECONDS = 5.0
CONNECT_RETRY_BASE_SECONDS = 0.5
CONNECT_RETRY_CAP_SECONDS = 30.0

log = structlog.get_logger("pivotal_sync.source")

Partitions = set[tuple[str, int]]


class RebalanceHooks(Protocol):
    async def partitions_revoked(self, partitions: Partitions) -> None: ...


class Admission(Protocol):
    """Where fetched records go (intake.py)."""

    async def admit(self, records: Sequence[RecordRef]) -> None: ...


class Backlog(Protocol):
    """Events fetched and not finished yet (the scheduler): fetching pauses above a bound."""

    @property
    def pending_events(self) -> int: ...

    @property
    def compact_events(self) -> int: ...


class DrainEstimate(Protocol):
    """Seconds the quota needs to send `n` requests (the rate limiter), for the lag metric."""

    def seconds_to_send(self, n: int) -> float: ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: Source) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._source._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._source._on_assigned({(tp.topic, tp.partition) for tp in assigned})


class Source:
    def __init__(
        self,
        *,
        settings: Settings,
        kafka: KafkaClients | None = None,
        progress: Progress,
        metrics: Metrics,
        intake: Admission,
        hooks: RebalanceHooks,
        backlog: Backlog,
        drain_estimate: DrainEstimate | None,
    ) -> None:
        self._settings = settings
        # How to reach the cluster (TLS, SASL); built from the settings unless given.
        self._kafka = kafka or KafkaClients(settings)
        # One group over every topic: offsets, progress and lag are all per (topic, partition).
        self._topics = list(settings.topics)
        self._progress = progress
        self._metrics = metrics
        self._intake = intake
        self._hooks = hooks
        self._backlog = backlog
        self._max_pending = settings.max_pending_events
        self._max_merged = settings.max_merged_events
        self._drain_estimate = drain_estimate
        # A dry run makes nothing durable, so it must not move the group's offsets either.
        self._commit_enabled = not settings.dry_run
        self._consumer: AIOKafkaConsumer | None = None
        self._paused = False
        self._committed: dict[tuple[str, int], int] = {}
        self._backoff = Backoff(CONNECT_RETRY_BASE_SECONDS, CONNECT_RETRY_CAP_SECONDS)
        self.connected = False
        # Why Kafka cannot be reached, naming the setting to fix ("" while connected).
        self.problem = ""
        self._logged_problem = ""
        self.assigned: Partitions = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, stop: asyncio.Event) -> bool:
        """Join the group, retrying with backoff while Kafka is unreachable. False if stopped."""

        def report(exc: BaseException, attempt: int, delay: float) -> None:
            self._log_problem(exc, attempt=attempt, retry_in_seconds=round(delay, 2))

        try:
            consumer = await retry(
                lambda: self._connect(stop),
                retry_on=(KafkaError,),
                backoff=self._backoff,
                stop=stop,
                on_retry=report,
            )
        except Stopped:
            return False
        consumer.subscribe(self._topics, listener=_Listener(self))
        self._consumer = consumer
        self.connected = True
        self.problem = self._logged_problem = ""
        log.info("kafka_connected", topics=self._topics, group_id=self._settings.kafka_group_id)
        return True

    async def _connect(self, stop: asyncio.Event) -> AIOKafkaConsumer:
        s = self._settings
        consumer = self._kafka.consumer(
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Postgres, not Kafka, decides what is finished; isolation keeps aborted
            # transactional records (if the CRM uses transactions) out.
            isolation_level="read_committed",
            client_id="pivotal-sync",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        )
        try:
            # The bootstrap and first metadata request can wait ~40 s on a silent broker: a
            # stop request must not wait with them (daemon/signals.py).
            await signals.or_stop(consumer.start(), stop)
        except BaseException as exc:
            await self._abandon(consumer)
            if isinstance(exc, KafkaError):
                await self._explain(exc)
            raise
        return consumer

    async def _explain(self, exc: BaseException) -> None:
        """Find out why Kafka refuses us (aiokafka only says "Unable to bootstrap")."""
        self.problem = await self._kafka.diagnose() or f"unreachable ({type(exc).__name__})"

    def _log_problem(self, exc: BaseException, **context: object) -> None:
        # One line per distinct reason: a retry every few seconds must not flood the log.
        if self.problem != self._logged_problem:
            log.warning(
                "kafka_unreachable", reason=self.problem, error=type(exc).__name__, **context
            )
            self._logged_problem = self.problem

    @staticmethod
    async def _abandon(consumer: AIOKafkaConsumer) -> None:
        stopping = asyncio.create_task(consumer.stop(), name="kafka-consumer-stop")
        await asyncio.wait({stopping}, timeout=CLOSE_STEP_TIMEOUT_SECONDS)

    async def close(self) -> None:
        if self._consumer is None:
            return
        try:
            await asyncio.wait_for(self.commit(), CLOSE_STEP_TIMEOUT_SECONDS)
        except TimeoutError:
            # Safe: the events past the last commit are redelivered and skipped by checkpoint.
            log.warning("final_offset_commit_timed_out")
        # With the broker gone, aiokafka's stop() can re-raise the CancelledError of its own
        # fetch task (seen with the broker stopped mid-run): as a separate task, that cannot
        # end the daemon with a traceback, while a cancellation of this one still propagates.
        stopping = asyncio.create_task(self._consumer.stop(), name="kafka-consumer-stop")
        done, _ = await asyncio.wait({stopping}, timeout=CLOSE_STEP_TIMEOUT_SECONDS)
        if not done:
            stopping.cancel()
            log.warning("kafka_consumer_stop_timed_out")
        elif stopping.cancelled() or stopping.exception() is not None:
            log.warning("kafka_consumer_stop_failed")
        self._consumer = None
        self.connected = False

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        committer = asyncio.create_task(self._commit_forever(stop), name="committer")
        lag = asyncio.create_task(self._lag_forever(stop), name="lag")
        try:
            while not stop.is_set():
                self._apply_backpressure()
                try:
                    # The time-out does not bound every wait: while the group join is under
                    # way, aiokafka waits for an assignment with none (a broker gone mid-join
                    # is never assigned), and a stop request must not wait with it.
                    batches = await signals.or_stop(
                        self._consumer.getmany(
                            timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
                        ),
                        stop,
                    )
                except Stopped:
                    break
                except KafkaError as exc:
                    # aiokafka reconnects by itself; keep polling, but say so.
                    self.connected = False
                    log.warning("kafka_fetch_failed", error=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                records = [RecordRef.of(r) for batch in batches.values() for r in batch]
                if records:
                    await self._intake.admit(records)
        finally:
            committer.cancel()
            lag.cancel()
            await asyncio.gather(committer, lag, return_exceptions=True)

    def _apply_backpressure(self) -> None:
        assert self._consumer is not None
        # Two bounds: events held whole cost ~1 KB each, events merged into a waiting request
        # ~100 bytes (daemon/merged_events.py), so a coalescing backlog may run far ahead.
        merged = self._backlog.compact_events
        whole = self._backlog.pending_events - merged
        partitions = self._consumer.assignment()
        if not self._paused and (whole >= self._max_pending or merged >= self._max_merged):
            self._consumer.pause(*partitions)
            self._paused = True
            log.info("fetching_paused", pending_events=whole, merged_events=merged)
        elif self._paused and whole <= self._max_pending // 2 and merged <= self._max_merged // 2:
            self._consumer.resume(*partitions)
            self._paused = False
            log.info("fetching_resumed", pending_events=whole, merged_events=merged)
        elif self._paused:
            # Partitions assigned after the pause must not fetch either.
            self._consumer.pause(*partitions)

    # -- commits ---------------------------------------------------------------------------
    async def commit(self, partitions: Partitions | None = None) -> None:
        """Commit every partition whose safe position advanced (only `partitions` if given)."""
        if self._consumer is None or not self._commit_enabled:
            return
        positions = self._progress.committable()
        if partitions is not None:
            positions = {tp: off for tp, off in positions.items() if tp in partitions}
        positions = {tp: off for tp, off in positions.items() if tp in self.assigned}
        if not positions:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(t, p): off for (t, p), off in positions.items()}
            )
        except KafkaError as exc:
            log.warning("offset_commit_failed", error=type(exc).__name__)
            return
        self._progress.mark_committed(positions)
        self._committed.update(positions)

    async def _commit_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_SECONDS)
            await self.commit()

    async def _lag_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._check_broker()
            if self.connected:
                try:
                    await self.update_lag()
                except KafkaError as exc:
                    log.warning("lag_update_failed", error=type(exc).__name__)
            await asyncio.sleep(LAG_INTERVAL_SECONDS)

    async def _check_broker(self) -> None:
        """Readiness must see a broker outage, and the fetch loop does not: aiokafka reconnects
        in the background and a fetch from a dead broker just comes back empty. A metadata
        request every lag interval does see it."""
        assert self._consumer is not None
        try:
            await asyncio.wait_for(self._consumer.topics(), BROKER_CHECK_TIMEOUT_SECONDS)
        except (KafkaError, TimeoutError) as exc:
            self.connected = False
            await self._explain(exc)
            self._log_problem(exc)
            return
        if not self.connected:
            log.info("kafka_reachable")
        self.connected = True
        self.problem = self._logged_problem = ""

    async def update_lag(self) -> dict[tuple[str, int], int]:
        """Lag per assigned partition: high watermark − committed position.

        The high watermark comes from the last fetch response (`highwater()`), which is right
        on every broker (`end_offsets()` is not, on tansu after multi-record batches)."""
        lags: dict[tuple[str, int], int] = {}
        if self._consumer is None:
            return lags
        for topic, partition in sorted(self.assigned):
            tp = TopicPartition(topic, partition)
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            committed = self._committed.get((topic, partition))
            if committed is None:
                committed = await self._consumer.committed(tp) or 0
                self._committed[(topic, partition)] = committed
            lag = max(0, high - committed)
            lags[(topic, partition)] = lag
            self._metrics.lag_records.labels(topic=topic, partition=str(partition)).set(lag)
            self._metrics.lag_seconds.labels(topic=topic, partition=str(partition)).set(
                self._drain_estimate.seconds_to_send(lag) if self._drain_estimate else 0.0
            )
        return lags

    # -- rebalances ------------------------------------------------------------------------
    def _on_assigned(self, partitions: Partitions) -> None:
        self.assigned = set(partitions)
        self._metrics.assigned_partitions.set(len(self.assigned))
        for topic, partition in partitions:
            self._metrics.lag_records.labels(topic=topic, partition=str(partition))
            self._metrics.lag_seconds.labels(topic=topic, partition=str(partition))
        log.info("partitions_assigned", partitions=sorted(p for _, p in partitions))

    async def _on_revoked(self, partitions: Partitions) -> None:
        if not partitions:
            return
        log.info("partitions_revoked", partitions=sorted(p for _, p in partitions))
        await self._hooks.partitions_revoked(partitions)
        await self.commit(partitions)
        self._progress.forget(partitions)
        for topic, partition in partitions:
            self._committed.pop((topic, partition), None)
            for gauge in (self._metrics.lag_records, self._metrics.lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition))
        self.assigned -= partitions
        self._metrics.assigned_partitions.set(len(self.assigned))
