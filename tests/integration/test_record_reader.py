"""Reading records back by position from the real broker: the bytes of merged events, for
their dead letters, come back exactly as they were published (key, value, headers)."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from daemon.kafka_clients import KafkaClients
from daemon.record_reader import RecordReader
from devtools.local_services import Broker
from tests.fixtures.kafka import MakeTopic


async def publish(broker: Broker, topic: str, partition: int, count: int) -> None:
    async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers) as producer:
        batch = [
            producer.send(
                topic,
                f'{{"n": {n}}}'.encode(),
                key=f"cus_{n}".encode(),
                partition=partition,
                headers=[("origin", f"p{partition}".encode())],
            )
            for n in range(count)
        ]
        for sent in batch:
            await sent


async def test_records_far_apart_on_two_partitions_come_back_as_published(
    kafka_broker: Broker, make_topic: MakeTopic
) -> None:
    topic = await make_topic(partitions=2)
    await publish(kafka_broker, topic, 0, 2000)
    await publish(kafka_broker, topic, 1, 10)
    reader = RecordReader(KafkaClients.plaintext(kafka_broker.bootstrap_servers))
    wanted = [(topic, 0, 3), (topic, 0, 1999), (topic, 0, 700), (topic, 1, 9)]
    found = await reader.read(wanted)
    assert set(found) == set(wanted)
    for position in wanted:
        record = found[position]
        (_, partition, offset) = position
        n = offset
        assert (record.topic, record.partition, record.offset) == position
        assert record.value == f'{{"n": {n}}}'.encode()
        assert record.key == f"cus_{n}".encode()
        assert record.headers == (("origin", f"p{partition}".encode()),)
