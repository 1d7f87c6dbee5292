"""What parsing and validating one fresh record costs the intake, before and after, side by side.

    python -m bench.intake_parse [--records 20000] [--rounds 5]

Times `Intake._parse`'s path (`Limits.check_record`, the mapping's decode, `Limits.check_event`)
over a backlog of built-in CloudEvents (customer updates, contact updates with a few fields,
now and then a customer with nested metadata), next to the same path with the checks as they
were before the intake-speed change (kept below as reference functions) and next to a bare
`json.loads`, the floor. The variants take turns in every round, so machine noise hits them
alike; the table gives the best round of each.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef
from daemon.formats.mapping import MappingFile
from daemon.limits import ENVELOPE_LEVELS, Limits, raw_nesting_depth, record_bytes

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
    # Intake._parse, without the Intake around it.
    LIMITS.check_record(record)
    item = MAPPING.decode(record)
    if isinstance(item, Event):
        LIMITS.check_event(item)
    return item


def before(record: RecordRef) -> object:
    """The same path with the checks as they were: the raw depth scan of every record and a
    formatted path for every value (the decode is today's in both)."""
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
    for path, depth, value in reference_walk(event.fields):
        if depth > LIMITS.max_nesting_depth:
            raise InvalidEventError("too_deep", path)
        problem = reference_unsendable(value)
        if problem:
            raise InvalidEventError("invalid_field", f"{path}: {problem}")
        if reference_longest_string(value) > LIMITS.max_field_chars:
            raise InvalidEventError("field_too_long", path)


def reference_walk(fields: Mapping[str, Any]) -> Iterator[tuple[str, int, Any]]:
    stack: list[tuple[str, int, Any]] = [("data", 1, fields)]
    while stack:
        path, depth, value = stack.pop()
        yield path, depth, value
        if isinstance(value, dict):
            stack.extend(
                (f"{path}.{reference_clip(str(k))}", depth + 1, v) for k, v in value.items()
            )
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", depth + 1, v) for i, v in enumerate(value))


def reference_unsendable(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "a number beyond the range of a double"
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
    for text in texts:
        try:
            str(text).encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode (a lone surrogate)"
    return None


def reference_longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((len(str(k)) for k in value), default=0)
    return 0


def reference_clip(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


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
        "after (Intake._parse path)": current,
        "bare json.loads (floor)": bare,
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, parse in variants.items():
            best[name] = min(best[name], seconds_per_record(parse, batch))
    base = best["before (reference checks)"]
    print(f"{'path':<28} {'records':>8} {'µs/record':>10} {'ratio':>6}")
    for name in variants:
        print(f"{name:<28} {len(batch):>8} {best[name] * 1e6:>10.1f} {best[name] / base:>6.2f}")


if __name__ == "__main__":
    main()
