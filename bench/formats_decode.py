"""What each input format costs the intake: microseconds to decode one record, side by side.

    python -m bench.formats_decode [--records 20000] [--rounds 5]

The same CRM changes (`devtools.sample_stream`) as built-in CloudEvents in structured and in
binary mode, and as Debezium row changes through the demo's mapping (`devtools.debezium_stream`).
The shapes take turns in every round, so machine noise hits all of them alike; the table gives
the best round of each and its ratio to the structured built-in contract, today's only shape.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Sequence

from daemon.errors import InvalidEventError
from daemon.events import EntityKind, RecordRef
from daemon.formats.mapping import MappingFile, parse_mapping
from devtools.debezium_stream import TABLES, debezium_stream, mapping_yaml
from devtools.sample_stream import Message, StreamSpec, generate


def structured(messages: Sequence[Message]) -> list[RecordRef]:
    return [
        RecordRef(topic="crm.customers", partition=0, offset=i, key=m.key, value=m.value)
        for i, m in enumerate(messages)
    ]


def binary(messages: Sequence[Message]) -> list[RecordRef]:
    records = []
    for i, message in enumerate(messages):
        event = json.loads(message.value or b"{}")
        headers = tuple((f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data")
        data = event.get("data")
        value = json.dumps(data).encode() if data is not None else b""
        records.append(
            RecordRef(
                topic="crm.customers",
                partition=0,
                offset=i,
                key=message.key,
                value=value,
                headers=(*headers, ("content-type", b"application/json")),
            )
        )
    return records


def debezium(messages: Sequence[Message]) -> tuple[list[RecordRef], MappingFile]:
    topics = {kind: f"crm.public.{TABLES[kind]}" for kind in EntityKind}
    stream = debezium_stream(messages)
    records = [
        RecordRef(topic=topics[kind], partition=0, offset=i, key=m.key, value=m.value)
        for kind, table in stream.tables.items()
        for i, m in enumerate(table)
    ]
    return records, parse_mapping(mapping_yaml(topics), "demo-mapping.yaml")


def seconds_per_record(decode: Callable[[RecordRef], object], records: list[RecordRef]) -> float:
    started = time.perf_counter()
    for record in records:
        with contextlib.suppress(InvalidEventError):
            decode(record)
    return (time.perf_counter() - started) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.formats_decode")
    parser.add_argument("--records", type=int, default=20_000, help="records per shape, about")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    messages = generate(StreamSpec(customers=max(1, args.records // 14), malformed=0, seed=1))
    builtin = MappingFile.builtin()
    dbz_records, dbz_mapping = debezium(messages)
    shapes = {
        "CloudEvents structured (built-in)": (builtin.decode, structured(messages)),
        "CloudEvents binary (built-in)": (builtin.decode, binary(messages)),
        "Debezium through a mapping": (dbz_mapping.decode, dbz_records),
    }
    best = {name: float("inf") for name in shapes}
    for _ in range(args.rounds):
        for name, (decode, records) in shapes.items():
            best[name] = min(best[name], seconds_per_record(decode, records))
    base = best["CloudEvents structured (built-in)"]
    print(f"{'shape':<36} {'records':>8} {'µs/record':>10} {'ratio':>6}")
    for name, (_, records) in shapes.items():
        print(f"{name:<36} {len(records):>8} {best[name] * 1e6:>10.1f} {best[name] / base:>6.2f}")


if __name__ == "__main__":
    main()
