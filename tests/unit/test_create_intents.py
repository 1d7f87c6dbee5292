"""Create intents are committed in groups: concurrent saves share one write, and each caller
returns only once its own intent is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from daemon import postgres_outages as retrying
from daemon.backoff import Stopped
from daemon.create_intents import MAX_BATCH, IntentWriter
from daemon.entities import Intent
from daemon.events import EntityKey, EntityKind


def intent(name: str, key: str = "k") -> Intent:
    entity = EntityKey(kind=EntityKind.CUSTOMER, external_id=name)
    return Intent(key=entity, idempotency_key=f"{key}-{name}", parent_id=None, body={"name": name})


@dataclass
class SlowStore:
    """Each write takes a while, as a Postgres round trip does; it can be made to fail."""

    writes: list[list[Intent]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def save_intents(self, intents: Sequence[Intent]) -> None:
        await self.release.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.writes.append(list(intents))


async def test_saves_arriving_during_a_write_are_committed_together_in_the_next() -> None:
    store = SlowStore()
    writer = IntentWriter(store, asyncio.Event())
    first = asyncio.create_task(writer.save(intent("a")))
    await asyncio.sleep(0)  # the first write has started and waits for the store
    others = [asyncio.create_task(writer.save(intent(n))) for n in ("b", "c", "d")]
    await asyncio.sleep(0)
    assert not first.done()
    store.release.set()
    await asyncio.gather(first, *others)
    assert [[i.key.external_id for i in w] for w in store.writes] == [["a"], ["b", "c", "d"]]


async def test_a_caller_returns_only_after_its_intent_is_written() -> None:
    store = SlowStore()
    writer = IntentWriter(store, asyncio.Event())
    saving = asyncio.create_task(writer.save(intent("a")))
    await asyncio.sleep(0.01)
    assert not saving.done()
    assert store.writes == []
    store.release.set()
    await saving
    assert store.writes == [[intent("a")]]


async def test_a_newer_intent_for_the_same_entity_in_one_group_wins() -> None:
    store = SlowStore()
    writer = IntentWriter(store, asyncio.Event())
    blocker = asyncio.create_task(writer.save(intent("x")))
    await asyncio.sleep(0)
    grouped = [
        asyncio.create_task(writer.save(intent("a", key="old"))),
        asyncio.create_task(writer.save(intent("a", key="new"))),
    ]
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(blocker, *grouped)
    assert store.writes[1] == [intent("a", key="new")]


async def test_groups_are_capped_and_the_rest_goes_in_the_next_write() -> None:
    store = SlowStore()
    store.release.set()
    writer = IntentWriter(store, asyncio.Event())
    await asyncio.gather(*(writer.save(intent(f"c{i}")) for i in range(MAX_BATCH + 3)))
    assert [len(w) for w in store.writes] == [MAX_BATCH, 3]


async def test_a_postgres_outage_is_waited_out_and_nothing_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrying, "RETRY_BASE_SECONDS", 0.001)
    store = SlowStore(failures=[ConnectionRefusedError(), ConnectionRefusedError()])
    store.release.set()
    writer = IntentWriter(store, asyncio.Event())
    await asyncio.gather(writer.save(intent("a")), writer.save(intent("b")))
    assert sorted(i.key.external_id for w in store.writes for i in w) == ["a", "b"]


async def test_stopping_during_an_outage_tells_every_caller_of_the_group() -> None:
    stop = asyncio.Event()
    stop.set()
    store = SlowStore(failures=[ConnectionRefusedError()])
    store.release.set()
    writer = IntentWriter(store, stop)
    results = await asyncio.gather(
        writer.save(intent("a")), writer.save(intent("b")), return_exceptions=True
    )
    assert [type(r) for r in results] == [Stopped, Stopped]
    assert store.writes == []


async def test_a_cancelled_caller_does_not_cancel_the_write_the_others_wait_for() -> None:
    store = SlowStore()
    writer = IntentWriter(store, asyncio.Event())
    blocker = asyncio.create_task(writer.save(intent("x")))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(writer.save(intent("a")))
    kept = asyncio.create_task(writer.save(intent("b")))
    await asyncio.sleep(0)
    cancelled.cancel()
    store.release.set()
    await asyncio.gather(blocker, kept)
    assert [i.key.external_id for i in store.writes[1]] == ["a", "b"]
    assert cancelled.cancelled()
