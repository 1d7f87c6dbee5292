"""Composition root: opens every room, runs them together, owns the shutdown order.

Start-up: HTTP first (so /livez answers while dependencies are awaited), then Postgres
(migrations under an advisory lock), then Kafka; an unreachable dependency is retried with
backoff and logged, never a crash loop. Shutdown (SIGTERM/SIGINT) is the reverse, in the order
that loses nothing: stop fetching → let running work finish (bounded by the drain timeout) →
flush checkpoints → commit offsets → close.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from daemon import logs, postgres_access, redaction, signals, tls
from daemon.admitted import Admitted
from daemon.backoff import Backoff, Stopped, retry
from daemon.checkpoints import CheckpointStore
from daemon.config import Settings, SlugConflictPolicy, load_settings
from daemon.dead_letter_topic import DeadLetterTopic
from daemon.dispatcher import Api, Dispatcher, Pacer
from daemon.dry_run import DryRunApi, UnlimitedPacer
from daemon.entities import EntityCache
from daemon.formats.mapping import MappingFile, mapping_for
from daemon.intake import Intake
from daemon.kafka_clients import KafkaClients
from daemon.metrics import Metrics
from daemon.pivotal import PivotalClient
from daemon.postgres_outages import through_outages
from daemon.progress import Progress
from daemon.quota_ledger import PostgresLedger, SharedPacer, key_hash
from daemon.ratelimit import RateLimiter
from daemon.record_reader import RecordReader
from daemon.recorder import Recorder
from daemon.scheduler import Scheduler
from daemon.server import create_app, serve
from daemon.signals import run_until_signalled
from daemon.source import Partitions, Source
from daemon.version import version

DB_CHECK_INTERVAL_SECONDS = 5.0
DB_RECHECK_INTERVAL_SECONDS = 1.0
DB_PING_TIMEOUT_SECONDS = 2.0
# Checkpoint retention runs this long after start-up, then at this interval.
PRUNE_FIRST_DELAY_SECONDS = 60.0
PRUNE_INTERVAL_SECONDS = 3600.0
# Shutdown steps after the drain; together they keep SIGTERM's exit within the drain timeout
# plus a few seconds, whatever Postgres does.
FINAL_FLUSH_TIMEOUT_SECONDS = 3.0
CONNECT_RETRY_BASE_SECONDS = 0.5
CONNECT_RETRY_CAP_SECONDS = 30.0

log = structlog.get_logger("pivotal_sync.app")


def _configure(settings: Settings) -> None:
    logs.configure(settings.log_format, settings.log_level)
    redaction.register_settings(settings)


def main(*, dry_run: bool | None = None) -> int:
    settings = load_settings()
    if dry_run:
        settings = settings.model_copy(update={"dry_run": True})
    settings.require_api_key()
    settings.require_database_url()
    mapping = mapping_for(settings.topics, settings.mapping_file)
    # TLS files and keys load here, so a bad one stops start-up (exit 2) instead of retrying.
    kafka = KafkaClients(settings)
    api_tls = tls.client_context(
        ca_file=settings.api_ca_file, ca_variable="PIVOTAL_SYNC_API_CA_FILE", replace_roots=False
    )
    _configure(settings)
    freeze_start_up()
    try:
        return _run_loop(Daemon(settings, kafka, api_tls, mapping).run())
    finally:
        # Back to normal for whatever runs after in this process (an in-process caller, a test).
        gc.unfreeze()
        # The loop removed its handlers on close: a late SIGTERM must not end us by the signal.
        signals.remember_early()


def migrate_main() -> int:
    settings = load_settings()
    dsn = settings.require_database_url()
    _configure(settings)

    async def migrate() -> int:
        async with await CheckpointStore.connect(dsn) as store:
            applied = await store.migrate()
        log.info("migrations_applied", applied=applied or "none pending")
        return 0

    return _run_loop(migrate())


def freeze_start_up() -> None:
    """Leave what start-up built out of every later garbage collection.

    The cyclic collector's full collections walk every container the process holds, and
    ~70,000 of them are the modules, classes and functions imported at start-up, which live
    until exit. Frozen, they are never walked again: in a catch-up the daemon's CPU per event
    fell by ~10 % (bench/catchup.py, docs/benchmarks.md). Reference counting still frees a
    frozen object; what stays for the run is a cycle of frozen objects that becomes garbage
    later (what is garbage at start-up is collected before the freeze).
    The thresholds stay CPython's: raising them saved as much CPU again but doubled peak RSS
    under a backlog (measured in bench/pipeline.py's memory scenario, docs/benchmarks.md).
    """
    gc.collect()  # start-up's garbage is freed, not frozen for the process's lifetime
    gc.freeze()


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, installed with uvicorn[standard]
    except ImportError:
        return run_until_signalled(main)
    return run_until_signalled(main, loop_factory=uvloop.new_event_loop)


def _with_cause(reason: str, cause: str) -> str:
    """A readiness reason, followed by what is known of its cause (naming the setting)."""
    return f"{reason}: {cause}" if cause else reason


class Daemon:
    """One `pivotal-sync run` process."""

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaClients | None = None,
        api_tls: ssl.SSLContext | None = None,
        mapping: MappingFile | None = None,
    ) -> None:
        self.settings = settings
        # main() builds both before anything starts, so bad TLS files stop start-up (exit 2).
        self.kafka = kafka or KafkaClients(settings)
        self.api_tls = api_tls
        # How each topic's records become events (daemon/formats/); main() reads the file
        # before anything starts, so a bad one stops start-up with exit 2.
        self.mapping = mapping or mapping_for(settings.topics, settings.mapping_file)
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.store: CheckpointStore | None = None
        self.shared_pacer: SharedPacer | None = None
        self.source: Source | None = None
        self.dispatcher: Dispatcher | None = None
        self.dead_letter_topic: DeadLetterTopic | None = None
        self.database_ok = False
        # Why Postgres cannot be reached, naming the setting to fix ("" until a failure says).
        self.database_problem = ""
        self.starting = True

    # -- readiness -------------------------------------------------------------------------
    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if self.starting:
            reasons.append("starting")
        if not self.database_ok:
            reasons.append(_with_cause("postgres unreachable", self.database_problem))
        if self.source is None or not self.source.connected:
            problem = self.source.problem if self.source is not None else ""
            reasons.append(_with_cause("kafka not connected", problem))
        if self.dispatcher is not None and self.dispatcher.auth_paused:
            reasons.append("paused: Pivotal refused the API key (401)")
        if self.dispatcher is not None and self.dispatcher.internal_errors_paused:
            reasons.append("paused: internal errors on several events in a row (see the logs)")
        if self.stop.is_set():
            reasons.append("shutting down")
        return reasons

    # -- run -------------------------------------------------------------------------------
    async def run(self) -> int:
        log.info(
            "starting",
            version=version(),
            dry_run=self.settings.dry_run,
            topic=self.settings.kafka_topic,
        )
        signals.handle_in_loop(self._request_stop)
        http = asyncio.create_task(
            serve(
                create_app(self.metrics, self.not_ready_reasons), self.settings.http_port, self.stop
            )
        )
        try:
            return await self._run()
        finally:
            self.stop.set()
            await http

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("shutdown_requested", signal=sig.name)
        self.stop.set()

    async def _run(self) -> int:
        store = await self._connect_store()
        if store is None:
            return 0
        self.store = store
        try:
            try:
                # A database that answers but refuses the DDL (read-only during a failover,
                # statement time-outs) is an outage too: wait it out instead of crash-looping.
                await through_outages(store.migrate, self.stop, "migrate")
            except Stopped:
                return 0
            return await self._pipeline(store)
        finally:
            await store.close()

    async def _connect_store(self) -> CheckpointStore | None:
        dsn = self.settings.require_database_url()

        def report(exc: BaseException, attempt: int, delay: float) -> None:
            self._database_failed(exc, attempt=attempt, retry_in_seconds=round(delay, 2))

        try:
            store = await retry(
                lambda: signals.or_stop(
                    CheckpointStore.connect(dsn, metrics=self.metrics), self.stop
                ),
                retry_on=(TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError),
                backoff=Backoff(CONNECT_RETRY_BASE_SECONDS, CONNECT_RETRY_CAP_SECONDS),
                stop=self.stop,
                on_retry=report,
            )
        except Stopped:
            return None
        self.database_ok = True
        self.database_problem = ""
        return store

    def _database_failed(self, exc: BaseException, **context: object) -> None:
        """Record why Postgres is unreachable; log it once per distinct reason (no flood)."""
        problem = postgres_access.explain(exc)
        if problem != self.database_problem or self.database_ok:
            log.warning("postgres_unreachable", reason=problem, error=type(exc).__name__, **context)
        self.database_problem = problem
        self.database_ok = False

    async def _pipeline(self, store: CheckpointStore) -> int:
        s = self.settings
        metrics = self.metrics
        api: Api
        pacer: Pacer
        client: PivotalClient | None = None
        limiter: RateLimiter | None = None
        ledger: PostgresLedger | None = None
        if s.dry_run:
            api, pacer = DryRunApi(), UnlimitedPacer()
            log.warning(
                "dry_run",
                detail="requests are planned and logged, none is sent, nothing is committed",
            )
        else:
            client = PivotalClient(
                base_url=s.api_url,
                api_key=s.require_api_key(),
                verify=self.api_tls,
                timeout_seconds=s.request_timeout_seconds,
                max_connections=s.max_in_flight,
            )
            limiter = RateLimiter(
                initial_rate_per_minute=s.rate_limit_per_minute,
                max_in_flight=s.max_in_flight,
                metrics=metrics,
                window_seconds=s.rate_limit_window_seconds,
            )
            api, pacer = client, limiter
            if s.quota_ledger:
                ledger = PostgresLedger(s.require_database_url(), key_hash(s.require_api_key()))
                self.shared_pacer = SharedPacer(
                    local=limiter,
                    ledger=ledger,
                    metrics=metrics,
                    window_hint_seconds=s.rate_limit_window_seconds,
                )
                pacer = self.shared_pacer
        progress = Progress()
        scheduler = Scheduler()
        entities = EntityCache()
        dlq = (
            DeadLetterTopic(kafka=self.kafka, topic=s.kafka_dead_letter_topic)
            if s.kafka_dead_letter_topic and not s.dry_run
            else None
        )
        self.dead_letter_topic = dlq
        admitted = Admitted()
        recorder = Recorder(
            store=None if s.dry_run else store,
            progress=progress,
            metrics=metrics,
            flush_interval_seconds=s.checkpoint_flush_interval_seconds,
            batch_size=s.checkpoint_batch_size,
            admitted=admitted,
            dead_letter_topic=dlq,
        )
        dispatcher = Dispatcher(
            api=api,
            pacer=pacer,
            scheduler=scheduler,
            entities=entities,
            recorder=recorder,
            held_records=RecordReader(self.kafka),
            intents=None if s.dry_run else store,
            metrics=metrics,
            workers=s.max_in_flight,
            record_source=s.record_source,
            adopt_slug_conflicts=s.slug_conflict is SlugConflictPolicy.ADOPT,
            parent_timeout_seconds=s.parent_timeout_seconds,
            auth_probe_interval_seconds=s.auth_probe_interval_seconds,
        )
        self.dispatcher = dispatcher
        intake = Intake(
            store=store,
            entities=entities,
            dispatcher=dispatcher,
            recorder=recorder,
            progress=progress,
            metrics=metrics,
            admitted=admitted,
            mapping=self.mapping,
            stop=self.stop,
            limits=s.intake_limits(),
        )
        rebalance = _Rebalance(dispatcher, recorder, scheduler, intake, s.drain_timeout_seconds)
        source = Source(
            settings=s,
            kafka=self.kafka,
            progress=progress,
            metrics=metrics,
            intake=intake,
            hooks=rebalance,
            backlog=scheduler,
            drain_estimate=limiter,
        )
        self.source = source
        try:
            if not await source.start(self.stop):
                return 0
            self.starting = False
            return await self._supervise(source, dispatcher, recorder, store)
        finally:
            if client is not None:
                await client.aclose()
            if ledger is not None:
                await ledger.close()

    async def _supervise(
        self, source: Source, dispatcher: Dispatcher, recorder: Recorder, store: CheckpointStore
    ) -> int:
        s = self.settings
        recorder_stop = asyncio.Event()
        fetching = asyncio.create_task(source.run(self.stop), name="source")
        working = asyncio.create_task(
            dispatcher.run(self.stop, s.drain_timeout_seconds), name="dispatcher"
        )
        recording = asyncio.create_task(recorder.run(recorder_stop), name="recorder")
        ledger_stop = asyncio.Event()
        sharing = (
            asyncio.create_task(self.shared_pacer.run(ledger_stop), name="quota-ledger")
            if self.shared_pacer is not None
            else None
        )
        checking = asyncio.create_task(self._check_database(store), name="db-check")
        pruning = asyncio.create_task(self._prune_forever(store), name="checkpoint-retention")
        dlq_stop = asyncio.Event()
        dlq = (
            asyncio.create_task(self.dead_letter_topic.run(dlq_stop), name="dead-letter-topic")
            if self.dead_letter_topic is not None
            else None
        )
        stopper = asyncio.create_task(self.stop.wait())
        done, _ = await asyncio.wait(
            [fetching, working, recording, stopper], return_when=asyncio.FIRST_COMPLETED
        )
        code = 0
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                log.error("component_failed", component=task.get_name(), exc_info=task.exception())
                code = 1
        self.stop.set()
        # The order that loses nothing: no new records → running work ends → outcomes durable
        # → offsets committed.
        await asyncio.gather(fetching, working, return_exceptions=True)
        ledger_stop.set()  # after the workers: draining ones still take slots
        recorder_stop.set()
        # Both bounded together, and not with wait_for: cancelling a query into a silent
        # Postgres waits for the cancel request, in the same silence. An abandoned flush loses
        # nothing: its offsets are not committed, so the events come again after the restart
        # and the checkpoint table sorts them out.
        ending = {recording} if sharing is None else {recording, sharing}
        ended, _ = await asyncio.wait(ending, timeout=FINAL_FLUSH_TIMEOUT_SECONDS)
        if sharing is not None and sharing not in ended:
            sharing.cancel()
            log.warning("quota_ledger_stop_abandoned")
        if recording not in ended:
            recording.cancel()
            # Its connection would hold the process open until the server answered.
            store.terminate()
            log.warning("final_checkpoint_flush_abandoned", unflushed=recorder.backlog)
        elif recording.cancelled() or recording.exception() is not None:
            code = 1
        checking.cancel()
        pruning.cancel()
        await asyncio.gather(checking, pruning, return_exceptions=True)
        dlq_stop.set()
        if dlq is not None:
            await asyncio.gather(dlq, return_exceptions=True)
        await source.close()
        log.info("stopped", exit_code=code)
        return code

    async def _prune_forever(self, store: CheckpointStore) -> None:
        days = self.settings.checkpoint_retention_days
        if days <= 0 or self.settings.dry_run:
            return
        await asyncio.sleep(PRUNE_FIRST_DELAY_SECONDS)
        while True:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                pruned = await store.prune_checkpoints(cutoff)
            except Exception as exc:  # retention can wait for the next round
                log.warning("checkpoint_prune_failed", error=type(exc).__name__)
            else:
                self.metrics.checkpoints_pruned.inc(pruned)
                if pruned:
                    log.info("checkpoints_pruned", rows=pruned, finished_before=cutoff.isoformat())
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)

    async def _check_database(self, store: CheckpointStore) -> None:
        while True:
            try:
                # Bounded whatever the server does (a blackhole included): see ping().
                await store.ping(DB_PING_TIMEOUT_SECONDS)
                if not self.database_ok:
                    log.info("postgres_reachable")
                self.database_ok = True
            except Exception as exc:
                self._database_failed(exc)
            # While it is down, look more often: readiness comes back soon after Postgres does.
            await asyncio.sleep(
                DB_CHECK_INTERVAL_SECONDS if self.database_ok else DB_RECHECK_INTERVAL_SECONDS
            )


class _Rebalance:
    """Before a partition is given up: its running work finishes (bounded), outcomes are
    flushed, and its waiting events are dropped — the next owner resumes from the commit."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        recorder: Recorder,
        scheduler: Scheduler,
        intake: Intake,
        timeout: float,
    ) -> None:
        self._dispatcher = dispatcher
        self._recorder = recorder
        self._scheduler = scheduler
        self._intake = intake
        self._timeout = timeout

    async def partitions_revoked(self, partitions: Partitions) -> None:
        started = time.monotonic()
        self._intake.revoking(partitions)  # first: an admission under way must not queue them
        finished = await self._dispatcher.wait_until_idle(partitions, self._timeout)
        try:
            await asyncio.wait_for(self._recorder.flush(), FINAL_FLUSH_TIMEOUT_SECONDS)
        except TimeoutError:
            # The outcomes stay buffered and land with a later flush (if the next owner reads
            # their events first, it redoes them: the same requests, idempotent). Raising here
            # would skip the rest: aiokafka logs a failed listener and goes on with the
            # rebalance, and we would send waiting works of partitions that are not ours.
            log.warning("revoke_flush_timed_out", unflushed=self._recorder.backlog)
        dropped = self._scheduler.drop_partitions(partitions)
        # They were never finished here: the next owner (maybe us again) must see them as new.
        self._intake.release(dropped)
        log.info(
            "partitions_released",
            running_work_finished=finished,
            waiting_events_dropped=sum(work.event_count for work in dropped),
            seconds=round(time.monotonic() - started, 3),
        )


if __name__ == "__main__":
    sys.exit(main())
