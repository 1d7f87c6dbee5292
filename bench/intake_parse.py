"""What parsing and validating one fresh record costs the intake, before and after, side by side.

    python -m bench.intake_parse [--records 20000] [--rounds 5]

Times what the intake does for one fresh record — the orjson peek for the checkpoint look-up
(`rereads.peek`), then `Intake._parse`'s path (`Limits.check_record`, the mapping's decode,
`Limits.check_event`) — over a backlog of built-in CloudEvents (customer updates, contact
updates with a few fields, now and then a customer with nested metadata). Next to it: the same
with the value decoded a second time by the stdlib instead of handing on the peeked document
(until session 7); that with the checks as they were before the intake-speed change (the raw
depth scan and the path-naming walk, both still in daemon/limits.py); and a bare `json.loads`,
the floor. The variants take turns in every round, so machine noise hits them alike; the
table gives the best round of each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef
from daemon.formats.mapping import MappingFile
from daemon.limits import ENVELOPE_LEVELS, Limits, raw_nesting_depth, record_bytes
from daemon.rereads import peek

LIMITS = Limits()
MAPPING = MappingFile.builtin()


def records(count: int) -> list[RecordRef]:
    """Two customer updates, one contact update and, every tenth record, nested metadata."""
    made = []
    for i in range(count):
        customer = f"cust_{i // 4:06d}"
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"coal_{i:08d}",
            "source": "crm/bench",
            "type": "customer.updated",
            "subject": customer,
            "time": "2026-11-26T10:00:00Z",
            "sequence": str(i // 4 + 7),
            "data": {"status": "active", "mrr": 12345 + i},
        }
        if i % 4 == 2:
            event["type"] = "contact.updated"
            event["subject"] = f"ct_{i:07d}"
            event["data"] = {
                "customer": customer,
                "name": "Ada Lovelace",
                "email": f"ada{i}@example.com",
                "title": "CTO",
                "is_primary": i % 8 == 2,
            }
        elif i % 10 == 9:
            event["data"]["metadata"] = {
                "hubspot": {"owner": "Grace", "pipeline": {"stage": "won", "ids": [i, i + 1]}},
                "tags": ["enterprise", "emea"],
            }
        made.append(
            RecordRef(
                topic="crm.customers",
                partition=0,
                offset=i,
                key=customer.encode(),
                value=json.dumps(event, separators=(",", ":")).encode(),
            )
        )
    return made


def current(record: RecordRef) -> object:
    # Intake._peek then Intake._parse, without the Intake around them.
    return decode(record, peek(record).document())


def decoded_twice(record: RecordRef) -> object:
    peek(record)  # paid for the look-up either way
    return decode(record, None)


def decode(record: RecordRef, document: dict[str, Any] | None) -> object:
    LIMITS.check_record(record)
    item = MAPPING.decode(record, document)
    if isinstance(item, Event):
        LIMITS.check_event(item)
    return item


def before(record: RecordRef) -> object:
    """The same path with the checks as they were: the raw depth scan of every record and a
    formatted path for every value (the decode is today's, the value decoded twice)."""
    peek(record)
    reference_check_record(record)
    item = MAPPING.decode(record)
    if isinstance(item, Event):
        reference_check_event(item)
    return item


def bare(record: RecordRef) -> object:
    return json.loads(record.value or b"")


def reference_check_record(record: RecordRef) -> None:
    if record_bytes(record) > LIMITS.max_record_bytes:
        raise InvalidEventError("record_too_large", "")
    if record.value is None:
        return
    if raw_nesting_depth(record.value) > LIMITS.max_nesting_depth + ENVELOPE_LEVELS:
        raise InvalidEventError("too_deep", "")


def reference_check_event(event: Event) -> None:
    # The walk that names a path for every value: what check_event ran for every record before;
    # now it runs only for a record the quick check refuses, to name the problem.
    LIMITS._refuse(event.fields)


def seconds_per_record(parse: Callable[[RecordRef], object], batch: list[RecordRef]) -> float:
    started = time.perf_counter()
    for record in batch:
        parse(record)
    return (time.perf_counter() - started) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_parse")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = records(args.records)
    # Both paths must accept the whole backlog, or the comparison would time refusals.
    for record in batch:
        current(record)
        before(record)
    variants = {
        "before (reference checks)": before,
        "peek, decode again (session 6)": decoded_twice,
        "peek, reuse (Intake's path)": current,
        "bare json.loads (floor)": bare,
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, parse in variants.items():
            best[name] = min(best[name], seconds_per_record(parse, batch))
    base = best["before (reference checks)"]
    print(f"{'path':<32} {'records':>8} {'µs/record':>10} {'ratio':>6}")
    for name in variants:
        print(f"{name:<32} {len(batch):>8} {best[name] * 1e6:>10.1f} {best[name] / base:>6.2f}")


if __name__ == "__main__":
    main()
