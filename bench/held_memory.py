"""What a coalescing backlog costs in memory per held event, before and after, side by side.

    python -m bench.held_memory [--events 500000] [--customers 5000]

A backlog of customer updates spread round-robin over `--customers` is parsed and handed to
the pieces that hold it until its requests are done: the scheduler (the works and their
events), the offset tracking (daemon/progress.py) and the admitted ids (daemon/admitted.py).
"after" is the daemon as it is: a work keeps only its last event whole, the merged ones as an
id and a position (daemon/merged_events.py), offsets as one byte each. "before" holds every
event whole, as the scheduler did, and tracks offsets in a deque and a set, as Progress did.
Memory is what tracemalloc counts as still allocated once everything is held (the parsed
records that were let go are freed), divided by the number of events.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from collections import deque
from collections.abc import Callable

from daemon.admitted import Admitted
from daemon.events import Event, RecordRef, parse_record
from daemon.progress import Progress
from daemon.scheduler import Scheduler

TOPIC = "crm"


def backlog(events: int, customers: int) -> list[RecordRef]:
    records = []
    for n in range(events):
        customer = f"cust_{n % customers:06d}"
        value = {
            "specversion": "1.0",
            "id": f"coal_{n:08d}",
            "source": "crm/bench",
            "type": "customer.updated",
            "subject": customer,
            "time": "2026-11-26T10:00:00Z",
            "sequence": str(2 + n // customers),
            "data": {"status": ("onboarding", "active", "at_risk")[n % 3], "mrr": n % 500_000},
        }
        records.append(
            RecordRef(
                topic=TOPIC,
                partition=0,
                offset=n,
                key=customer.encode(),
                value=json.dumps(value).encode(),
            )
        )
    return records


def after(records: list[RecordRef]) -> object:
    scheduler, progress, admitted = Scheduler(), Progress(), Admitted()
    for start in range(0, len(records), 500):
        batch = records[start : start + 500]
        progress.track_many(TOPIC, 0, [r.offset for r in batch])
        for record in batch:
            event = parse_record(record)
            admitted.add(event.id)
            scheduler.add(event, now=0.0)
    return scheduler, progress, admitted


def before(records: list[RecordRef]) -> object:
    held: list[Event] = []
    tracked: deque[int] = deque()
    unfinished: set[int] = set()
    admitted = Admitted()
    for start in range(0, len(records), 500):
        batch = records[start : start + 500]
        offsets = [r.offset for r in batch]
        tracked.extend(offsets)
        unfinished.update(offsets)
        for record in batch:
            event = parse_record(record)
            admitted.add(event.id)
            held.append(event)
    return held, tracked, unfinished, admitted


def held_bytes(hold: Callable[[list[RecordRef]], object], events: int, customers: int) -> int:
    """Bytes still allocated while `hold` keeps the backlog (its records' bytes included: the
    Kafka client hands them over, and only what is held keeps them alive)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    records = backlog(events, customers)
    # The backlog leaves our hands the way a fetched batch does: only what is held remains.
    kept = hold(records)
    del records
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return size


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held_memory")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--customers", type=int, default=5_000)
    args = parser.parse_args()
    sizes = {
        "before (every event whole)": held_bytes(before, args.events, args.customers),
        "after (merged: id + position)": held_bytes(after, args.events, args.customers),
    }
    base = sizes["before (every event whole)"]
    print(f"{args.events:,} updates over {args.customers:,} customers, all held at once")
    print(f"{'holding':<32} {'MB':>8} {'bytes/event':>12} {'ratio':>6}")
    for name, size in sizes.items():
        per_event = size / args.events
        print(f"{name:<32} {size / 1e6:>8.1f} {per_event:>12.0f} {size / base:>6.2f}")


if __name__ == "__main__":
    main()
