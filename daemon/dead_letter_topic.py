"""The optional dead-letter topic: a copy of every dead-lettered record, for Kafka tooling.

Postgres stays the record of dead letters (with status and response body, and what the
operator tools read); this topic carries the original key, value and headers plus
`pivotal-sync-reason` / `pivotal-sync-detail` / `pivotal-sync-status` headers, so that
consumers without database access (alerting, a data lake) see them too. Copies are sent after
the dead letter is durable, at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from aiokafka.errors import KafkaError

from daemon.backoff import Backoff, Stopped, retry
from daemon.kafka_clients import KafkaClients
from daemon.outcomes import Finished
from daemon.record_reader import UNAVAILABLE_HEADER

SEND_RETRY_BASE_SECONDS = 0.5
SEND_RETRY_CAP_SECONDS = 10.0

log = structlog.get_logger("pivotal_sync.dead_letter_topic")


class DeadLetterTopic:
    def __init__(self, *, kafka: KafkaClients, topic: str) -> None:
        self._topic = topic
        self._backoff = Backoff(SEND_RETRY_BASE_SECONDS, SEND_RETRY_CAP_SECONDS)
        self._producer = kafka.producer(acks="all", client_id="pivotal-sync-dlq")
        self._queue: asyncio.Queue[Finished] = asyncio.Queue()

    def forward(self, finished: Sequence[Finished]) -> None:
        """Queue the dead letters among `finished` (called when they are durable)."""
        for item in finished:
            if item.dead_letter is None:
                continue
            if any(name == UNAVAILABLE_HEADER for name, _ in item.record.headers):
                # No key and no value to copy: a null record would read as a tombstone (and a
                # compacted topic refuses it). The row in Postgres says what happened.
                log.warning("dead_letter_not_copied", event_id=item.event_id, why="unavailable")
                continue
            self._queue.put_nowait(item)

    async def run(self, stop: asyncio.Event) -> None:
        await self._producer.start()
        try:
            while not (stop.is_set() and self._queue.empty()):
                try:
                    item = await asyncio.wait_for(self._queue.get(), 0.5)
                except TimeoutError:
                    continue
                await self._send(item, stop)
        finally:
            await self._producer.stop()

    async def _send(self, item: Finished, stop: asyncio.Event) -> None:
        assert item.dead_letter is not None
        letter = item.dead_letter
        headers = [
            *item.record.headers,
            ("pivotal-sync-reason", letter.reason.encode()),
            ("pivotal-sync-detail", letter.detail[:1000].encode()),
            ("pivotal-sync-event-id", item.event_id.encode()),
        ]
        if letter.status is not None:
            headers.append(("pivotal-sync-status", str(letter.status).encode()))

        def report(exc: BaseException, attempt: int, delay: float) -> None:
            log.warning(
                "dead_letter_topic_send_failed",
                error=type(exc).__name__,
                attempt=attempt,
                retry_in_seconds=round(delay, 2),
            )

        with contextlib.suppress(Stopped):  # Postgres holds it; the copy is best effort at stop
            await retry(
                lambda: self._producer.send_and_wait(
                    self._topic, key=item.record.key, value=item.record.value, headers=headers
                ),
                retry_on=(KafkaError,),
                backoff=self._backoff,
                stop=stop,
                on_retry=report,
            )
