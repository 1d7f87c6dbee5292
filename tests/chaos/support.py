"""What the chaos scenarios share: publishing odd records, running the CLI, reading results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from devtools.local_stack import daemon_env
from devtools.sample_stream import ExpectedState
from tests.chaos.corpus import INTERNAL_ERROR_ENTITY, Item
from tests.chaos.table import Row
from tests.e2e.conftest import E2E_KEY, Scenario

# `make chaos` sets this: the long scenarios run, and the short ones try more moments.
FULL_VARIABLE = "PIVOTAL_SYNC_TEST_CHAOS"
FULL = os.environ.get(FULL_VARIABLE) == "full"

# A daemon whose request builder has a bug that only one entity meets: the "record that
# triggers an internal exception". Injected here, by the test, never in the product.
INJECT_INTERNAL_ERROR = f"""
import sys
from daemon import dispatcher
from daemon.cli import main

original = dispatcher.Dispatcher._body

def _body(self, work, *, creating):
    if work.entity.external_id == {INTERNAL_ERROR_ENTITY!r}:
        raise RuntimeError("injected: a bug that only this record meets")
    return original(self, work, creating=creating)

dispatcher.Dispatcher._body = _body
sys.exit(main())
"""
WITH_INJECTED_BUG = (sys.executable, "-c", INJECT_INTERNAL_ERROR)

# Large enough for the 10 MB corpus item (aiokafka's default refuses anything above 1 MB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024


async def publish_items(s: Scenario, items: Sequence[Item]) -> None:
    """Publish in order, headers included; the scenario learns the partitions' ends."""
    producer = AIOKafkaProducer(
        bootstrap_servers=s.broker.bootstrap_servers, acks="all", max_request_size=MAX_REQUEST_BYTES
    )
    await producer.start()
    try:
        for item in items:
            meta = await producer.send_and_wait(
                s.topic, key=item.key, value=item.value, headers=list(item.headers)
            )
            s.ends[meta.partition] = max(s.ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()


def expect_items(expected: ExpectedState, items: Sequence[Item]) -> Counter[str]:
    """Add the synced items to `expected`; the dead-letter reasons the others must get."""
    for item in items:
        if item.dead is None:
            fields = dict(item.synced)
            if "metadata" in fields:
                # The daemon adds the trace to every record it creates (daemon/dispatcher.py).
                trace = {"external_id": item.external_id, "source": "pivotal-sync"}
                fields["metadata"] = {**fields["metadata"], **trace}
            expected.customers[item.external_id] = {"customer": item.external_id, **fields}
    return Counter(item.dead for item in items if item.dead is not None)


def cli(s: Scenario, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`pivotal-sync ARGS` with the scenario's environment, as an operator runs it."""
    return cli_process(s, ["-m", "daemon.cli", *args], timeout)


def cli_process(
    s: Scenario, python_args: Sequence[str], timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    env = daemon_env(
        bootstrap_servers=s.broker.bootstrap_servers,
        topic=s.topic,
        group_id=s.group,
        database_url=s.database_url,
        api_url=f"{s.sandbox_url}/api/v1",
        api_key=E2E_KEY,
    )
    return subprocess.run(
        [sys.executable, *python_args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Runs several CLI commands in one process (a process costs ~2 s of imports): each in the main
# thread, as the CLI expects (its signal handling needs it), printing a JSON list of
# [exit code, output] at the end.
_BATCH = """
import contextlib, io, json, sys
from daemon.cli import main
results = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results.append([code, out.getvalue()])
print(json.dumps(results))
"""


def cli_batch(s: Scenario, commands: Sequence[Sequence[str]]) -> list[tuple[int, str]]:
    """Each `pivotal-sync ARGS` of `commands`, in one process: exit codes and outputs."""
    done = cli_process(s, ["-c", _BATCH, json.dumps([list(c) for c in commands])])
    assert done.returncode == 0, done.stderr[-3000:]
    return [(code, out) for code, out in json.loads(done.stdout)]


def cli_json(s: Scenario, *args: str) -> Any:
    done = cli(s, *args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


async def dead_letter_reasons(s: Scenario) -> Counter[str]:
    async with await s.store() as store:
        summary = await store.summary()
    return Counter(summary.dead_letters)


def row(
    s: Scenario,
    name: str,
    fault: str,
    *,
    events: int,
    problems: list[str],
    dead: Counter[str],
    started: float,
    exit_code: int | None,
) -> Row:
    """A table row from a finished scenario: lost = missing or wrong entities, duplicates =
    entities created twice (the sandbox's own duplicate-request log counts too)."""
    lost = sum(1 for p in problems if "is missing" in p or "expected" in p)
    duplicates = sum(1 for p in problems if "times" in p) + len(s.admin.stats()["duplicates"])
    return Row(
        scenario=name,
        fault=fault,
        events=events,
        lost=lost,
        duplicates=duplicates,
        dead_letters=dead,
        catch_up_seconds=round(time.monotonic() - started, 1),
        exit_code=exit_code,
    )
