"""The composition root: why the daemon says it is not ready, in every state its parts can be
in, and the wiring that needs no socket — the rebalance hook that ties dispatcher, recorder,
scheduler and intake together, and the periodic database check behind readiness."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest

import daemon.app
from daemon.admitted import Admitted
from daemon.app import Daemon, _Rebalance
from daemon.backoff import Backoff
from daemon.checkpoints import CheckpointStore
from daemon.config import Settings, load_settings
from daemon.dispatcher import Dispatcher, Pacer
from daemon.dry_run import DryRunApi, UnlimitedPacer
from daemon.entities import EntityCache
from daemon.events import RecordRef
from daemon.intake import Intake
from daemon.metrics import Metrics
from daemon.outcomes import Finished, Outcome
from daemon.pivotal import ApiResponse
from daemon.progress import Progress
from daemon.ratelimit import RateLimiter
from daemon.recorder import Recorder
from daemon.rereads import Checkpointed
from daemon.scheduler import Scheduler
from daemon.source import Source
from tests.unit.pipeline_doubles import TOPIC, KafkaRecords, MemoryCheckpoints, record

ENVIRON = {
    "PIVOTAL_API_KEY": "pk_test_app",
    "PIVOTAL_SYNC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "PIVOTAL_SYNC_CHECKPOINT_RETENTION_DAYS": "0",
}
STARTING = "starting"
NO_POSTGRES = "postgres unreachable"
NO_KAFKA = "kafka not connected"
AUTH = "paused: Pivotal refused the API key (401)"
INTERNAL = "paused: internal errors on several events in a row (see the logs)"
SHUTTING_DOWN = "shutting down"


class BrokenApi(DryRunApi):
    """Every create raises, as a bug in the send path would."""

    async def create_customer(self, body: Mapping[str, Any], idempotency_key: str) -> ApiResponse:
        raise ZeroDivisionError("injected bug")


@dataclass
class Parts:
    settings: Settings
    store: MemoryCheckpoints
    scheduler: Scheduler
    recorder: Recorder
    dispatcher: Dispatcher
    intake: Intake
    source: Source
    admitted: Admitted
    limiter: RateLimiter


def build_parts(pacer: Pacer | None = None, api: DryRunApi | None = None) -> Parts:
    """The pipeline as Daemon._pipeline wires it, with Postgres in memory and nothing started."""
    settings = load_settings(ENVIRON)
    store, scheduler, entities, progress = (
        MemoryCheckpoints(),
        Scheduler(),
        EntityCache(),
        Progress(),
    )
    metrics, admitted = Metrics(), Admitted()
    limiter = RateLimiter(initial_rate_per_minute=600, max_in_flight=4, metrics=metrics)
    recorder = Recorder(
        store=store,
        progress=progress,
        metrics=metrics,
        flush_interval_seconds=60,
        batch_size=1000,
        admitted=admitted,
    )
    dispatcher = Dispatcher(
        api=api or DryRunApi(),
        pacer=pacer or limiter,
        scheduler=scheduler,
        entities=entities,
        recorder=recorder,
        held_records=KafkaRecords(),
        intents=None,
        metrics=metrics,
        workers=4,
        record_source="test",
        adopt_slug_conflicts=True,
        parent_timeout_seconds=60,
        auth_probe_interval_seconds=60,
        backoff=Backoff(0.001, 0.002),
    )
    intake = Intake(
        store=store,
        entities=entities,
        dispatcher=dispatcher,
        recorder=recorder,
        progress=progress,
        metrics=metrics,
        admitted=admitted,
    )
    source = Source(
        settings=settings,
        progress=progress,
        metrics=metrics,
        intake=intake,
        hooks=_Rebalance(dispatcher, recorder, scheduler, intake, 1.0),
        backlog=scheduler,
        drain_estimate=limiter,
    )
    return Parts(
        settings, store, scheduler, recorder, dispatcher, intake, source, admitted, limiter
    )


def running_daemon(parts: Parts) -> Daemon:
    """A daemon past start-up with every part healthy."""
    app = Daemon(parts.settings)
    app.starting = False
    app.database_ok = True
    app.source, app.dispatcher = parts.source, parts.dispatcher
    parts.source.connected = True
    return app


@pytest.fixture
def parts() -> Parts:
    return build_parts()


def test_a_new_daemon_is_not_ready_until_started_and_connected() -> None:
    """Before start-up completes, readiness names start-up and both dependencies."""
    app = Daemon(load_settings(ENVIRON))
    assert app.not_ready_reasons() == [STARTING, NO_POSTGRES, NO_KAFKA]


def test_a_started_daemon_with_healthy_parts_is_ready(parts: Parts) -> None:
    """Connected to both and not paused: no reason at all."""
    assert running_daemon(parts).not_ready_reasons() == []


def test_an_unreachable_postgres_is_a_reason(parts: Parts) -> None:
    """Losing Postgres after start-up makes the daemon not ready, for that reason alone."""
    app = running_daemon(parts)
    app.database_ok = False
    assert app.not_ready_reasons() == [NO_POSTGRES]


def test_a_disconnected_kafka_is_a_reason(parts: Parts) -> None:
    """The source losing the broker makes the daemon not ready, for that reason alone."""
    app = running_daemon(parts)
    parts.source.connected = False
    assert app.not_ready_reasons() == [NO_KAFKA]


def test_an_auth_pause_is_a_reason_until_it_is_resumed(parts: Parts) -> None:
    """A 401 pause of the rate limiter shows on readiness and leaves it when resumed."""
    app = running_daemon(parts)
    parts.limiter.pause("auth")
    assert app.not_ready_reasons() == [AUTH]
    parts.limiter.resume("auth")
    assert app.not_ready_reasons() == []


async def test_internal_errors_on_several_entities_in_a_row_are_a_reason() -> None:
    """When every send raises (a bug, not a record), the dispatcher pauses and readiness says
    so, with nothing dead-lettered meanwhile."""
    parts = build_parts(pacer=UnlimitedPacer(), api=BrokenApi())
    app = running_daemon(parts)
    await parts.intake.admit([record(n, f"evt-{n}", subject=f"cus_{n}") for n in range(4)])
    stop = asyncio.Event()
    running = asyncio.create_task(parts.dispatcher.run(stop, 0.5))
    try:
        for _ in range(2000):
            if parts.dispatcher.internal_errors_paused:
                break
            await asyncio.sleep(0.001)
        assert app.not_ready_reasons() == [INTERNAL]
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    await parts.recorder.flush()
    assert parts.store.finished == []


def test_shutting_down_is_a_reason(parts: Parts) -> None:
    """Once stop is set, readiness says the daemon is shutting down."""
    app = running_daemon(parts)
    app.stop.set()
    assert app.not_ready_reasons() == [SHUTTING_DOWN]


def test_every_reason_is_listed_at_once() -> None:
    """Readiness lists all current reasons, in a stable order, not just the first."""
    parts = build_parts()
    app = Daemon(parts.settings)
    app.source, app.dispatcher = parts.source, parts.dispatcher
    parts.limiter.pause("auth")
    app.stop.set()
    assert app.not_ready_reasons() == [STARTING, NO_POSTGRES, NO_KAFKA, AUTH, SHUTTING_DOWN]


async def test_a_revoked_partition_flushes_outcomes_and_drops_only_its_waiting_events(
    parts: Parts,
) -> None:
    """Before giving a partition up, buffered outcomes are written and its waiting events
    leave the scheduler and the admitted ids; other partitions' events stay."""
    kept = dataclasses.replace(record(0, "evt-p1", subject="cus_2"), partition=1)
    await parts.intake.admit([record(0, "evt-p0-a"), record(1, "evt-p0-b", subject="cus_3")])
    await parts.intake.admit([kept])
    done = record(2, "evt-p0-done", subject="cus_4")
    parts.recorder.add([Finished(event_id="evt-p0-done", record=done, outcome=Outcome.SENT)])
    assert parts.scheduler.pending_events == 3

    await _Rebalance(
        parts.dispatcher, parts.recorder, parts.scheduler, parts.intake, 1.0
    ).partitions_revoked({(TOPIC, 0)})
    assert parts.store.outcomes() == [("evt-p0-done", 2, "sent")]
    assert parts.scheduler.pending_events == 1
    assert "evt-p0-a" not in parts.admitted
    assert "evt-p0-b" not in parts.admitted
    assert "evt-p1" in parts.admitted


async def test_a_revoke_whose_flush_overruns_still_gives_the_partition_up(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres slower than the revoke's bound: the outcomes stay buffered for a later flush,
    and the partition's waiting events are dropped all the same (an exception would have left
    them to be sent by a daemon that no longer owns them)."""
    monkeypatch.setattr(daemon.app, "FINAL_FLUSH_TIMEOUT_SECONDS", 0.05)
    await parts.intake.admit([record(0, "evt-p0-a")])
    done = record(1, "evt-p0-done", subject="cus_4")
    parts.recorder.add([Finished(event_id="evt-p0-done", record=done, outcome=Outcome.SENT)])
    parts.store.write_delay_seconds = 10.0

    await _Rebalance(
        parts.dispatcher, parts.recorder, parts.scheduler, parts.intake, 1.0
    ).partitions_revoked({(TOPIC, 0)})
    assert parts.scheduler.pending_events == 0
    assert "evt-p0-a" not in parts.admitted
    assert parts.recorder.backlog == 1

    parts.store.write_delay_seconds = 0.0
    await parts.recorder.flush()
    assert parts.store.outcomes() == [("evt-p0-done", 1, "sent")]


async def test_a_revoke_through_the_source_gives_up_the_partition_and_its_lag_series(
    parts: Parts,
) -> None:
    """The whole revoke as aiokafka's listener runs it: the revoked partition leaves the
    assignment and its lag series leave /metrics; the kept partition's stay."""
    metrics = parts.dispatcher._metrics
    parts.source._on_assigned({(TOPIC, 0), (TOPIC, 1)})
    for partition in ("0", "1"):
        metrics.lag_records.labels(topic=TOPIC, partition=partition).set(7)

    await parts.source._on_revoked({(TOPIC, 0)})
    assert parts.source.assigned == {(TOPIC, 1)}
    lag = {
        sample.labels["partition"]: sample.value
        for family in metrics.lag_records.collect()
        for sample in family.samples
    }
    assert lag == {"1": 7}


async def test_records_whose_partition_is_revoked_while_intake_waits_on_postgres_are_dropped(
    parts: Parts,
) -> None:
    """aiokafka runs the revoke in its own task, so it can come while an admission waits on
    Postgres. That admission must not queue the revoked partition's records afterwards: it
    would send events of a partition it no longer owns, and, when the partition comes back,
    ahead of the older events read again from the committed offset (an older value last)."""
    old = record(0, "e0", data={"name": "old"})
    new = record(1, "e1", data={"name": "new"})
    parts.source._on_assigned({(TOPIC, 0)})
    await parts.intake.admit([old])
    postgres_answers = asyncio.Event()
    look_up = parts.store.checkpoints_of

    async def slow_look_up(candidates: list[tuple[str, RecordRef]]) -> list[Checkpointed | None]:
        await postgres_answers.wait()
        return await look_up(candidates)

    parts.store.checkpoints_of = slow_look_up  # type: ignore[method-assign]
    admitting = asyncio.create_task(parts.intake.admit([new]))
    await asyncio.sleep(0.01)  # the admission waits on Postgres...
    await parts.source._on_revoked({(TOPIC, 0)})  # ...while the partition is given up
    postgres_answers.set()
    await admitting
    assert parts.scheduler.pending_events == 0
    assert "e1" not in parts.admitted

    # Given back to us: the fetch resumes at the committed offset, in order.
    parts.store.checkpoints_of = look_up  # type: ignore[method-assign]
    parts.source._on_assigned({(TOPIC, 0)})
    await parts.intake.admit([old, new])
    assert parts.scheduler.pending_events == 2
    [taken] = parts.scheduler.take_ready(lambda _: True, 1)
    assert (taken.carrier.id, taken.fields["name"]) == ("e1", "new")


class FlakyPing:
    """Stands in for the checkpoint store's ping: fails while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.pings = 0

    async def ping(self, timeout_seconds: float = 2.0) -> None:
        self.pings += 1
        if self.down:
            raise OSError("connection refused")


@pytest.fixture
def fast_database_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon.app, "DB_CHECK_INTERVAL_SECONDS", 0.001)
    monkeypatch.setattr(daemon.app, "DB_RECHECK_INTERVAL_SECONDS", 0.001)


async def wait_for_pings(ping: FlakyPing, count: int) -> None:
    for _ in range(2000):
        if ping.pings >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{ping.pings} pings, expected {count}")


@pytest.mark.usefixtures("fast_database_checks")
async def test_the_database_check_follows_postgres_going_away_and_coming_back(
    parts: Parts,
) -> None:
    """The periodic ping turns the Postgres reason on when it fails and off when it answers."""
    app = running_daemon(parts)
    ping = FlakyPing()
    checking = asyncio.create_task(app._check_database(cast(CheckpointStore, ping)))
    try:
        ping.down = True
        await wait_for_pings(ping, ping.pings + 2)
        [reason] = app.not_ready_reasons()
        # The reason goes on to say why, naming the setting to check.
        assert reason.startswith(f"{NO_POSTGRES}: ")
        assert "PIVOTAL_SYNC_DATABASE_URL" in reason
        ping.down = False
        await wait_for_pings(ping, ping.pings + 2)
        assert app.not_ready_reasons() == []
    finally:
        checking.cancel()
        await asyncio.gather(checking, return_exceptions=True)


async def test_retention_zero_never_prunes(parts: Parts) -> None:
    """With retention 0 days the pruning task ends at once instead of deleting checkpoints."""
    pruned: list[object] = []

    class Store:
        async def prune_checkpoints(self, finished_before: object) -> int:
            pruned.append(finished_before)
            return 0

    app = Daemon(parts.settings)
    await asyncio.wait_for(app._prune_forever(cast(CheckpointStore, Store())), 1)
    assert pruned == []


class _Node:
    partner: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    node = _Node()
    node.partner = node  # reference counting alone never frees a cycle
    return weakref.ref(node)


def test_start_up_is_frozen_after_its_garbage_is_freed_and_later_cycles_are_still_collected() -> (
    None
):
    thresholds = gc.get_threshold()
    before = _cycle()
    try:
        daemon.app.freeze_start_up()
        assert before() is None  # garbage left by start-up is not kept for the process's life
        assert gc.get_freeze_count() > 0  # the rest is left out of every later scan
        assert gc.get_threshold() == thresholds  # CPython's thresholds: see freeze_start_up

        after = _cycle()
        # No explicit gc.collect(): live container allocations passing the young threshold
        # are what must collect a cycle made after start-up.
        alive: list[list[object]] = [[] for _ in range(2 * thresholds[0])]
        assert after() is None
        del alive
    finally:
        gc.unfreeze()


def test_main_runs_the_daemon_with_start_up_frozen_and_unfreezes_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(daemon.app, "_configure", lambda settings: None)  # no global logging
    frozen_during_run: list[int] = []

    def run_loop(main: Coroutine[Any, Any, int]) -> int:
        main.close()  # the daemon itself is not what this test is about
        frozen_during_run.append(gc.get_freeze_count())
        return 0

    monkeypatch.setattr(daemon.app, "_run_loop", run_loop)
    try:
        assert daemon.app.main() == 0
        assert frozen_during_run[0] > 0
        assert gc.get_freeze_count() == 0  # an in-process caller gets its collector back
    finally:
        gc.unfreeze()
