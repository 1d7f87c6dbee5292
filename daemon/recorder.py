"""Makes outcomes durable in batches, then releases their offsets for commit.

The order is the guarantee: an event's offset becomes committable only after its checkpoint row
(and the entity-map change it caused) is committed in Postgres. Writes are batched — one
transaction per `flush_interval` or `batch_size` outcomes — because a transaction per event
would cap the daemon far below the pipeline's speed. A failed batch is kept and retried with
backoff; nothing is released until it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from daemon.admitted import Admitted
from daemon.backoff import Backoff
from daemon.events import EntityKey
from daemon.metrics import Metrics
from daemon.outcome_log import OutcomeLog
from daemon.outcomes import EntityState, Finished
from daemon.progress import Progress

RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 10.0

log = structlog.get_logger("pivotal_sync.recorder")


class DeadLetterCopies(Protocol):
    """The optional dead-letter topic (dead_letter_topic.py): copies of durable dead letters."""

    def forward(self, finished: Sequence[Finished]) -> None: ...


class OutcomeStore(Protocol):
    async def record(
        self, finished: Sequence[Finished], entities: Sequence[EntityState]
    ) -> None: ...


class Recorder:
    def __init__(
        self,
        *,
        store: OutcomeStore | None,
        progress: Progress,
        metrics: Metrics,
        flush_interval_seconds: float,
        batch_size: int,
        admitted: Admitted,
        dead_letter_topic: DeadLetterCopies | None = None,
    ) -> None:
        # store=None is the dry run: outcomes are logged, nothing is written or released.
        self._store = store
        self._progress = progress
        self._metrics = metrics
        self._interval = flush_interval_seconds
        self._batch_size = batch_size
        self._admitted = admitted
        self._dead_letter_topic = dead_letter_topic
        self._finished: list[Finished] = []
        self._entities: dict[EntityKey, EntityState] = {}
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._backoff = Backoff(RETRY_BASE_SECONDS, RETRY_CAP_SECONDS)
        self._outcome_log = OutcomeLog(metrics)

    def add(self, finished: Sequence[Finished], entities: Sequence[EntityState] = ()) -> None:
        self._outcome_log.finished(finished)
        self._finished.extend(finished)
        for state in entities:
            self._entities[state.key] = state  # the latest state of an entity wins
        if len(self._finished) >= self._batch_size:
            self._wakeup.set()

    def add_durable(self, finished: Sequence[Finished]) -> None:
        """Outcomes that are durable already (a replayed event found in the checkpoint table):
        count them and release their offsets without another write."""
        self._outcome_log.finished(finished)
        self._release(finished)

    @property
    def backlog(self) -> int:
        return len(self._finished)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            self._wakeup.clear()
            await self.flush()
        await self.flush()
        self._outcome_log.summarize()

    async def flush(self) -> None:
        """Write everything buffered; retries until it lands (callers bound it with timeouts)."""
        async with self._lock:
            attempt = 0
            while self._finished or self._entities:
                finished, self._finished = self._finished, []
                entities, self._entities = list(self._entities.values()), {}
                try:
                    await self._write(finished, entities)
                except asyncio.CancelledError:
                    # A caller that bounds the flush (a rebalance) gave up: the batch is written
                    # by the next flush. Dropped, its offsets would never be released.
                    self._put_back(finished, entities)
                    raise
                except Exception as exc:
                    self._put_back(finished, entities)
                    attempt += 1
                    self._metrics.checkpoint_failures.inc()
                    delay = self._backoff.delay(attempt)
                    log.warning(
                        "checkpoint_write_failed",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                        events=len(finished),
                        retry_in_seconds=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                    continue
                self._release(finished)

    def _put_back(self, finished: list[Finished], entities: list[EntityState]) -> None:
        # In front: order does not matter for correctness, but newer entity states added
        # meanwhile must win over the unwritten batch's.
        self._finished[:0] = finished
        for state in entities:
            self._entities.setdefault(state.key, state)

    async def _write(self, finished: list[Finished], entities: list[EntityState]) -> None:
        if self._store is None:
            return
        started = time.perf_counter()
        await self._store.record(finished, entities)
        self._metrics.checkpoint_duration.observe(time.perf_counter() - started)
        self._metrics.last_checkpoint.set(time.time())

    def _release(self, finished: Sequence[Finished]) -> None:
        if self._store is None:
            return  # dry run: nothing is durable, so nothing may be committed
        finish = self._progress.finish
        for item in finished:
            record = item.record
            finish(record.topic, record.partition, record.offset)
        if self._dead_letter_topic is not None:
            self._dead_letter_topic.forward(finished)
        copies = self._admitted.settle(finished)
        if copies:
            self.add_durable(copies)
