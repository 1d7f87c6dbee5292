"""The Kafka side against the real broker: a Source joins the group, is assigned every
partition, hands fetched records to intake in offset order, commits only the safe offset,
gives partitions up cleanly when a second member joins, and stops fetching while the pipeline
is full. Intake, the rebalance hooks and the backlog are in-memory doubles."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from daemon.config import load_settings
from daemon.events import RecordRef
from daemon.kafka_clients import KafkaClients
from daemon.metrics import Metrics
from daemon.progress import Progress
from daemon.source import CLOSE_STEP_TIMEOUT_SECONDS, FETCH_TIMEOUT_MS, Partitions, Source
from daemon.tools.status import committed_offsets
from devtools.fault_proxy import Fault, FaultProxy
from devtools.local_services import Broker, free_port
from tests.fixtures.kafka import MakeTopic

WAIT_SECONDS = 30.0
MAX_PENDING = 10
MAX_MERGED = 100


@dataclass
class RecordingIntake:
    """Tracks each record's offset, as intake does, and keeps the records in arrival order."""

    progress: Progress
    records: list[RecordRef] = field(default_factory=list)

    async def admit(self, records: Sequence[RecordRef]) -> None:
        for item in records:
            self.progress.track(item.topic, item.partition, item.offset)
        self.records += records

    def offsets(self, partition: int) -> list[int]:
        return [r.offset for r in self.records if r.partition == partition]


@dataclass
class RecordingHooks:
    """The rebalance hook: what was revoked, and what progress still knew at that moment."""

    progress: Progress
    revoked: list[Partitions] = field(default_factory=list)
    tracked_at_revoke: list[list[tuple[str, int]]] = field(default_factory=list)

    async def partitions_revoked(self, partitions: Partitions) -> None:
        self.revoked.append(set(partitions))
        self.tracked_at_revoke.append(sorted(self.progress.partitions))


@dataclass
class Backlog:
    pending_events: int = 0
    compact_events: int = 0


@dataclass
class Member:
    source: Source
    intake: RecordingIntake
    hooks: RecordingHooks
    backlog: Backlog
    progress: Progress
    group: str
    topic: str


async def eventually(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


async def produce(broker: Broker, topic: str, partition: int, count: int, start: int = 0) -> None:
    async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers) as producer:
        for n in range(start, start + count):
            await producer.send_and_wait(topic, f"p{partition}-{n}".encode(), partition=partition)


StartMember = Callable[[int], Awaitable[Member]]


@pytest.fixture
async def start_member(kafka_broker: Broker, make_topic: MakeTopic) -> AsyncIterator[StartMember]:
    """`await start_member(partitions)`: a started Source on a fresh topic, fetching in the
    background until the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(partitions: int) -> Member:
            topic = await make_topic(partitions=partitions)
            group = f"test-source-{uuid.uuid4().hex[:12]}"
            progress = Progress()
            intake, hooks, backlog = RecordingIntake(progress), RecordingHooks(progress), Backlog()
            source = Source(
                settings=load_settings(source_environ(kafka_broker, topic, group)),
                progress=progress,
                metrics=Metrics(),
                intake=intake,
                hooks=hooks,
                backlog=backlog,
                drain_estimate=None,
            )
            stop = asyncio.Event()
            assert await source.start(stop)
            stack.push_async_callback(source.close)
            running = asyncio.create_task(source.run(stop))

            async def halt() -> None:
                stop.set()
                await asyncio.wait_for(running, WAIT_SECONDS)

            stack.push_async_callback(halt)
            return Member(source, intake, hooks, backlog, progress, group, topic)

        yield start


def source_environ(broker: Broker, topic: str, group: str) -> dict[str, str]:
    environ = {
        "PIVOTAL_SYNC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "PIVOTAL_SYNC_KAFKA_TOPIC": topic,
        "PIVOTAL_SYNC_KAFKA_GROUP_ID": group,
        "PIVOTAL_SYNC_MAX_PENDING_EVENTS": str(MAX_PENDING),
        "PIVOTAL_SYNC_MAX_MERGED_EVENTS": str(MAX_MERGED),
    }
    timeouts = broker.group_timeouts
    if timeouts:
        environ["PIVOTAL_SYNC_KAFKA_SESSION_TIMEOUT_MS"] = str(timeouts["session_timeout_ms"])
        environ["PIVOTAL_SYNC_KAFKA_HEARTBEAT_INTERVAL_MS"] = str(timeouts["heartbeat_interval_ms"])
    return environ


async def committed(broker: Broker, member: Member, partitions: Sequence[int]) -> dict[int, int]:
    kafka = KafkaClients.plaintext(broker.bootstrap_servers)
    return await committed_offsets(kafka, member.group, member.topic, partitions)


async def test_a_lone_member_is_assigned_every_partition_and_reads_each_in_offset_order(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """All three partitions come to the only member, and each partition's records reach intake
    once, in offset order, with their values intact."""
    member = await start_member(3)
    await eventually(lambda: len(member.source.assigned) == 3, "three partitions assigned")
    assert member.source.assigned == {(member.topic, p) for p in range(3)}
    assert member.source.connected
    for partition in range(3):
        await produce(kafka_broker, member.topic, partition, 4)
    await eventually(lambda: len(member.intake.records) == 12, "twelve records admitted")
    for partition in range(3):
        assert member.intake.offsets(partition) == [0, 1, 2, 3]
    assert [r.value for r in member.intake.records if r.partition == 1] == [
        b"p1-0",
        b"p1-1",
        b"p1-2",
        b"p1-3",
    ]


async def test_only_the_offset_before_the_first_unfinished_event_is_committed(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """With offsets 0, 1 and 3 finished and 2 not, the group's offset stops at 2; once 2 and
    4 finish it moves to 5."""
    member = await start_member(1)
    await produce(kafka_broker, member.topic, 0, 5)
    await eventually(lambda: len(member.intake.records) == 5, "five records admitted")
    for offset in (0, 1, 3):
        member.progress.finish(member.topic, 0, offset)
    await member.source.commit()
    assert await committed(kafka_broker, member, [0]) == {0: 2}

    for offset in (2, 4):
        member.progress.finish(member.topic, 0, offset)
    await member.source.commit()
    assert await committed(kafka_broker, member, [0]) == {0: 5}


async def test_the_group_offset_stays_at_the_first_record_while_nothing_is_finished(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """Fetched is not finished: the commit loop never moves the group past offset 0."""
    member = await start_member(1)
    await produce(kafka_broker, member.topic, 0, 3)
    await eventually(lambda: len(member.intake.records) == 3, "three records admitted")
    await member.source.commit()
    await asyncio.sleep(1.5)  # past one interval of the background commit loop
    assert await committed(kafka_broker, member, [0]) in ({0: -1}, {0: 0})


async def test_a_second_member_takes_a_partition_after_the_first_gives_it_up_cleanly(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """When a second member joins, the hook is called with the revoked partitions, their
    finished offsets are committed, their progress is forgotten, and each member ends with
    one partition."""
    member = await start_member(2)
    await eventually(lambda: len(member.source.assigned) == 2, "both partitions assigned")
    await produce(kafka_broker, member.topic, 0, 2)
    await produce(kafka_broker, member.topic, 1, 2)
    await eventually(lambda: len(member.intake.records) == 4, "four records admitted")
    member.progress.finish(member.topic, 0, 0)  # partition 0: offset 1 still unfinished
    before = set(member.source.assigned)

    second = AIOKafkaConsumer(
        member.topic,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=member.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_broker.group_timeouts,
    )
    await second.start()
    try:
        await eventually(lambda: len(member.source.assigned) == 1, "one partition left")
        await eventually(lambda: len(second.assignment()) == 1, "the second member got one")
    finally:
        await second.stop()

    assert member.hooks.revoked[0] == before
    # The hook runs before progress is forgotten (it must still see what to flush).
    assert member.hooks.tracked_at_revoke[0] == sorted(before)
    assert not set(member.progress.partitions) - member.source.assigned
    assert (await committed(kafka_broker, member, [0]))[0] == 1


async def test_fetching_pauses_while_the_pipeline_is_full_and_resumes_at_half(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """With max_pending events waiting, new records are not fetched; at half of it, fetching
    resumes and they arrive."""
    member = await start_member(1)
    await eventually(lambda: len(member.source.assigned) == 1, "partition assigned")
    await produce(kafka_broker, member.topic, 0, 1)
    await eventually(lambda: len(member.intake.records) == 1, "the first record admitted")

    member.backlog.pending_events = MAX_PENDING
    await asyncio.sleep(0.5)  # the fetch loop sees the backlog within one fetch timeout
    await produce(kafka_broker, member.topic, 0, 3, start=1)
    await asyncio.sleep(1.5)
    assert len(member.intake.records) == 1

    member.backlog.pending_events = MAX_PENDING // 2 + 1  # not low enough yet
    await asyncio.sleep(1.0)
    assert len(member.intake.records) == 1

    member.backlog.pending_events = MAX_PENDING // 2
    await eventually(lambda: len(member.intake.records) == 4, "the held records admitted")
    assert member.intake.offsets(0) == [0, 1, 2, 3]


async def test_events_merged_into_waiting_requests_have_a_bound_of_their_own(
    start_member: StartMember, kafka_broker: Broker
) -> None:
    """Merged events are cheap (an id and a position), so they pause fetching at
    max_merged_events, not at max_pending_events; at half of it, fetching resumes."""
    member = await start_member(1)
    await eventually(lambda: len(member.source.assigned) == 1, "partition assigned")
    member.backlog.pending_events = member.backlog.compact_events = MAX_PENDING * 5
    await produce(kafka_broker, member.topic, 0, 1)
    await eventually(lambda: len(member.intake.records) == 1, "admitted below the merged bound")

    member.backlog.pending_events = member.backlog.compact_events = MAX_MERGED
    await asyncio.sleep(0.5)  # the fetch loop sees the backlog within one fetch timeout
    await produce(kafka_broker, member.topic, 0, 2, start=1)
    await asyncio.sleep(1.5)
    assert len(member.intake.records) == 1

    member.backlog.pending_events = member.backlog.compact_events = MAX_MERGED // 2
    await eventually(lambda: len(member.intake.records) == 3, "the held records admitted")


async def test_a_stop_request_ends_the_loop_while_the_group_join_cannot_complete(
    tmp_path: Path,
) -> None:
    """The broker is gone before the group join completes (seen when a broker stopped under a
    daemon that had just started): aiokafka's fetch then waits for an assignment with no time-out
    of its own. A stop request must still end the fetch loop at once, and closing stays bounded.

    Clients bootstrap from the broker's own port and are told to reach it through a proxy, so
    refusing the proxy leaves start-up able to finish and the join unable to."""
    proxy_port, broker_port = free_port(), free_port()
    topic, group = f"join-{uuid.uuid4().hex[:8]}", f"test-source-{uuid.uuid4().hex[:12]}"
    with FaultProxy.running(f"127.0.0.1:{broker_port}", port=proxy_port) as proxy:
        broker = Broker._spawn(broker_port, tmp_path / "tansu.log", advertised_port=proxy_port)
        try:
            broker._wait_ready()
            await broker.create_topic(topic, partitions=1)
            proxy.set(Fault.REFUSE)
            progress = Progress()
            source = Source(
                settings=load_settings(source_environ(broker, topic, group)),
                progress=progress,
                metrics=Metrics(),
                intake=RecordingIntake(progress),
                hooks=RecordingHooks(progress),
                backlog=Backlog(),
                drain_estimate=None,
            )
            stop = asyncio.Event()
            assert await source.start(stop)
            running = asyncio.create_task(source.run(stop))
            await asyncio.sleep(FETCH_TIMEOUT_MS / 1000 * 3)  # several fetch time-outs
            assert not source.assigned, "the join must not have completed for this test"
            assert not running.done()

            stop.set()
            await asyncio.wait_for(running, 2.0)
            await asyncio.wait_for(source.close(), 2 * CLOSE_STEP_TIMEOUT_SECONDS + 1.0)
        finally:
            broker.stop()
