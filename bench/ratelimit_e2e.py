"""Rate limiting end to end: the real daemon against the sandbox, and the seed guide's approach.

For each scenario, N `customer.created` events (distinct customers) are published to a fresh
3-partition topic; then, one after the other and each against its OWN sandbox process (same key,
same limit, window compressed to W = 10 s):

- pivotal-sync: the real `pivotal-sync run` process(es), one consumer group, until the group's
  committed offsets reach the end of the topic;
- the baseline: `bench/seed_baseline.py` (the guide's script: 4 workers, sleep `Retry-After` on a
  429, 1 s pause when `Remaining` < 5, retry 5xx) on the same events.

Every figure comes from the sandbox's request log (`/_sandbox/requests`) and stats: drain = first
to last `POST /customers` the sandbox saw; physical limit = ⌈N/L − 1⌉·W; sustained = requests
admitted after the first window ÷ drain, ÷ (L/W) (1.0 at the physical limit); duplicates = live
customers sharing `metadata.external_id`.

Scenarios: backlog (1 replica), replicas (3 daemons, one key; baseline: 3 copies on disjoint
thirds), latency (300 ± 100 ms, L = 300), raise (60 → 600 → 60), revoke (key revoked 20 s),
errors (20 % 503). Injected faults come from one seeded sequence, the same for both sides.

    python -m bench.ratelimit_e2e [--only backlog,replicas,latency,raise,revoke,errors]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import seed_baseline
from daemon.sandbox.testing import running_sandbox
from devtools.local_services import Broker, Postgres, create_database
from devtools.local_stack import DaemonProcess, broker_settings, committed_offsets, daemon_env
from devtools.sample_stream import Message, StreamSpec, generate, publish

KEY = "pivotal_live_e2e_0001"
PARTITIONS = 3
WINDOW = 10.0
SIDE_TIMEOUT_SECONDS = 180.0
PROBE_INTERVAL_SECONDS = 2.0
# Both sides draw injected faults from the same seeded sequence: the n-th request to reach the
# sandbox fails (or is slow) on both, so neither side is luckier with its 503s or latencies.
SAME_FAULTS = ("--fault-seed", "20261126")


@dataclass
class Stack:
    broker: Broker
    postgres: Postgres
    workdir: Path


@contextmanager
def local_stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="pivotal-sync-e2e-"))
    with (
        Broker.start(log_dir=workdir) as broker,
        Postgres.start(os.environ.get("PIVOTAL_SYNC_DATABASE_URL")) as postgres,
    ):
        yield Stack(broker, postgres, workdir)


@dataclass(frozen=True, slots=True)
class Logged:
    t: float
    method: str
    path: str
    status: int

    @property
    def is_create(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/").endswith("/customers")


class Sandbox:
    """The admin API of one sandbox, async (mid-run actions must not block the event loop)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.AsyncClient(base_url=f"{url}/_sandbox", timeout=10)

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = await self.client.request(method, path, json=payload)
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/stats")
        return result

    async def log(self) -> list[Logged]:
        entries = (await self._call("GET", "/requests"))["requests"]
        return [
            Logged(
                t=datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp(),
                method=e["method"],
                path=e["path"],
                status=int(e["status"]),
            )
            for e in entries
            if e.get("key_prefix")
        ]

    async def set_limit(self, limit: int) -> None:
        await self._call("POST", f"/keys/{KEY}/limit", {"limit": limit})

    async def revoke(self) -> None:
        await self._call("POST", f"/keys/{KEY}/revoke")

    async def restore(self) -> None:
        await self._call("POST", f"/keys/{KEY}/restore")

    async def wait_first_request(self, within: float = 120.0) -> float:
        """Wall time of the first API request the sandbox saw (polls)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            entries = await self.log()
            if entries:
                return entries[0].t
            await asyncio.sleep(0.05)
        raise TimeoutError("no request reached the sandbox")


# A mid-run action: gets the sandbox, returns named wall-clock instants (e.g. "revoked").
Action = Callable[[Sandbox], Awaitable[dict[str, float]]]


@dataclass
class Scenario:
    name: str
    title: str
    n: int
    limit: int
    replicas: int = 1
    sandbox_flags: tuple[str, ...] = ()
    daemon_env: dict[str, str] = field(default_factory=dict)
    action: Action | None = None
    physical: bool = True  # the physical limit applies (a fixed limit, no outage)


@dataclass
class Observed:
    side: str
    log: list[Logged]
    stats: dict[str, Any]
    marks: dict[str, float]
    per_replica: list[float]
    dead_letters: float | None = None
    outcomes: dict[str, float] = field(default_factory=dict)
    caught_up_seconds: float | None = None
    errors: int = 0


def _messages(n: int, prefix: str) -> list[Message]:
    return generate(
        StreamSpec(
            customers=n,
            updates_per_customer=0,
            contacts_per_customer=0,
            onboarding_fraction=0,
            customer_delete_fraction=0,
            malformed=0,
            prefix=prefix,
        )
    )


def _sandbox_args(scenario: Scenario) -> list[str]:
    return [
        "--window-seconds",
        str(int(WINDOW)),
        "--key",
        f"{KEY}:{scenario.limit}",
        "--request-log-size",
        "100000",
        *scenario.sandbox_flags,
    ]


async def _run_action(scenario: Scenario, sandbox: Sandbox) -> dict[str, float]:
    return await scenario.action(sandbox) if scenario.action else {}


async def _wait_caught_up(
    stack: Stack, group: str, topic: str, ends: dict[int, int], daemons: list[DaemonProcess]
) -> float:
    started = time.monotonic()
    while True:
        committed = await committed_offsets(
            stack.broker.bootstrap_servers, group, topic, PARTITIONS
        )
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return time.monotonic() - started
        dead = [d for d in daemons if not d.alive()]
        if dead:
            raise RuntimeError(f"a daemon exited: {dead[0].tail()}")
        if time.monotonic() - started > SIDE_TIMEOUT_SECONDS:
            raise TimeoutError(f"not caught up after {SIDE_TIMEOUT_SECONDS} s: {committed}")
        await asyncio.sleep(0.2)


async def run_daemon(stack: Stack, scenario: Scenario, messages: list[Message]) -> Observed:
    name = f"e2e_{scenario.name}_{uuid.uuid4().hex[:8]}"
    topic, group = f"topic-{name}", f"group-{name}"
    await stack.broker.create_topic(topic, partitions=PARTITIONS)
    database_url = await create_database(stack.postgres.dsn, name)
    ends = await publish(stack.broker.bootstrap_servers, topic, messages)
    with running_sandbox(*_sandbox_args(scenario)) as url:
        sandbox = Sandbox(url)
        daemons: list[DaemonProcess] = []
        action = asyncio.create_task(_run_action(scenario, sandbox))
        try:
            env = daemon_env(
                bootstrap_servers=stack.broker.bootstrap_servers,
                topic=topic,
                group_id=group,
                database_url=database_url,
                api_url=f"{url}/api/v1",
                api_key=KEY,
                LOG_LEVEL=os.environ.get("BENCH_DAEMON_LOG_LEVEL", "warning"),
                RATE_LIMIT_WINDOW_SECONDS=str(int(WINDOW)),
                AUTH_PROBE_INTERVAL_SECONDS=str(PROBE_INTERVAL_SECONDS),
                **broker_settings(stack.broker),
                **scenario.daemon_env,
            )
            for i in range(scenario.replicas):
                daemons.append(DaemonProcess(env, stack.workdir / f"{name}-{i}.log"))
            await asyncio.gather(*(asyncio.to_thread(d.wait_ready) for d in daemons))
            caught_up = await _wait_caught_up(stack, group, topic, ends, daemons)
            marks = await asyncio.wait_for(action, SIDE_TIMEOUT_SECONDS)
            per_replica = [d.total("pivotal_sync_api_requests_total") for d in daemons]
            dead_letters = sum(d.total("pivotal_sync_dead_letters_total") for d in daemons)
            outcomes: dict[str, float] = {}
            for d in daemons:
                for key, value in d.metrics().items():
                    if key.startswith("pivotal_sync_events_finished_total{"):
                        outcome = key.split('outcome="', 1)[1].split('"', 1)[0]
                        outcomes[outcome] = outcomes.get(outcome, 0.0) + value
            return Observed(
                side="pivotal-sync",
                log=await sandbox.log(),
                stats=await sandbox.stats(),
                marks=marks,
                per_replica=per_replica,
                dead_letters=dead_letters,
                outcomes=outcomes,
                caught_up_seconds=caught_up,
            )
        finally:
            action.cancel()
            for d in daemons:
                await asyncio.to_thread(d.stop)
            await sandbox.close()


async def run_baseline(scenario: Scenario, messages: list[Message]) -> Observed:
    customers = seed_baseline.customers_from(messages)
    shares = [customers[i :: scenario.replicas] for i in range(scenario.replicas)]
    with running_sandbox(*_sandbox_args(scenario)) as url:
        sandbox = Sandbox(url)
        action = asyncio.create_task(_run_action(scenario, sandbox))
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(seed_baseline.run(f"{url}/api/v1", KEY, share) for share in shares)
                ),
                SIDE_TIMEOUT_SECONDS,
            )
            marks = await asyncio.wait_for(action, SIDE_TIMEOUT_SECONDS)
            return Observed(
                side="seed guide",
                log=await sandbox.log(),
                stats=await sandbox.stats(),
                marks=marks,
                per_replica=[float(r.requests) for r in results],
                errors=sum(r.errors for r in results),
            )
        finally:
            action.cancel()
            await sandbox.close()


# -- mid-run actions ---------------------------------------------------------------------------
async def _sleep_until(wall: float) -> None:
    await asyncio.sleep(max(0.0, wall - time.time()))


def raise_limit(low: int, high: int, after: float) -> Action:
    async def action(sandbox: Sandbox) -> dict[str, float]:
        first = await sandbox.wait_first_request()
        await _sleep_until(first + after)
        await sandbox.set_limit(high)
        raised = time.time()
        await _sleep_until(raised + WINDOW)
        await sandbox.set_limit(low)
        return {"raised": raised, "lowered": time.time()}

    return action


def revoke_key(after: float, seconds: float) -> Action:
    async def action(sandbox: Sandbox) -> dict[str, float]:
        first = await sandbox.wait_first_request()
        await _sleep_until(first + after)
        await sandbox.revoke()
        revoked = time.time()
        await _sleep_until(revoked + seconds)
        await sandbox.restore()
        return {"revoked": revoked, "restored": time.time()}

    return action


# -- figures -----------------------------------------------------------------------------------
def physical_limit(n: int, limit: int) -> float:
    return math.ceil(n / limit - 1) * WINDOW


def _created(stats: dict[str, Any]) -> int:
    return int(stats.get("records", {}).get("customer", {}).get("live", 0))


def _duplicates(stats: dict[str, Any]) -> int:
    return sum(int(d["count"]) - 1 for d in stats.get("duplicates", []))


def figures(scenario: Scenario, seen: Observed) -> dict[str, Any]:
    log = seen.log
    creates = [r for r in log if r.is_create]
    first, last = creates[0].t, creates[-1].t
    drain = last - first
    rejected = sum(1 for r in log if r.status == 429)
    late_rejected = sum(1 for r in log if r.status == 429 and r.t >= first + WINDOW)
    admitted_late = sum(1 for r in log if r.status not in (401, 429) and r.t >= first + WINDOW)
    limit = physical_limit(scenario.n, scenario.limit) if scenario.physical else None
    row: dict[str, Any] = {
        "scenario": scenario.title,
        "side": seen.side,
        "requests": len(log),
        "429s": rejected,
        "429 %": 100 * rejected / len(log) if log else 0.0,
        "429s after 1st window": late_rejected,
        "drain s": drain,
        "limit s": limit,
        "drain ÷ limit": drain / limit if limit else None,
        "sustained ÷ limit": (
            admitted_late / drain / (scenario.limit / WINDOW)
            if scenario.physical and drain
            else None
        ),
        "duplicates": _duplicates(seen.stats),
        "created": f"{_created(seen.stats)}/{scenario.n}",
    }
    notes: list[str] = []
    if seen.caught_up_seconds is not None:
        notes.append(f"ready→caught up {seen.caught_up_seconds:.1f} s")
    if seen.dead_letters is not None:
        outcomes = ", ".join(f"{k} {v:.0f}" for k, v in sorted(seen.outcomes.items()))
        notes.append(f"dead letters {seen.dead_letters:.0f} (events finished: {outcomes})")
    if seen.errors:
        notes.append(f"records given up {seen.errors}")
    if scenario.replicas > 1:
        total = sum(seen.per_replica) or 1.0
        fair = total / len(seen.per_replica)
        shares = ", ".join(f"{r:.0f} ({r / fair:.2f}×fair)" for r in seen.per_replica)
        notes.append(f"per replica requests {shares}")
    windows = [0] * (int(drain // WINDOW) + 1)
    for r in log:
        if r.status not in (401, 429) and r.t >= first:
            windows[min(int((r.t - first) // WINDOW), len(windows) - 1)] += 1
    notes.append(f"admitted per {WINDOW:g} s window from the first create {windows}")
    admitted = sum(1 for r in log if r.status not in (401, 429))
    if scenario.physical and admitted != scenario.n:
        needed = physical_limit(admitted, scenario.limit)
        notes.append(
            f"{admitted} requests admitted (counted): their physical limit {needed:.0f} s, "
            f"drain ÷ that {drain / needed:.2f}"
        )
    notes.extend(_action_notes(seen))
    row["notes"] = "; ".join(notes)
    return row


def _action_notes(seen: Observed) -> list[str]:
    log, marks = seen.log, seen.marks
    notes = []
    if "raised" in marks:
        raised, lowered = marks["raised"], marks["lowered"]
        in_window = sum(1 for r in log if raised <= r.t < raised + WINDOW and r.status != 429)
        before = sum(1 for r in log if raised - WINDOW <= r.t < raised and r.status != 429)
        after_low = [r for r in log if r.t >= lowered]
        late_429 = sum(1 for r in after_low if r.status == 429 and r.t >= lowered + WINDOW)
        notes.append(
            f"admitted in the window before the raise {before}, in the window after it "
            f"{in_window} (room {600 - before}); 429s after lowering "
            f"{sum(1 for r in after_low if r.status == 429)} "
            f"(beyond its first window {late_429}); "
            f"requests after lowering {len(after_low)}"
        )
    if "revoked" in marks:
        revoked, restored = marks["revoked"], marks["restored"]
        during = [r for r in log if revoked <= r.t < restored]
        probes = sum(1 for r in during if r.method == "GET")
        work = len(during) - probes
        work_at = sorted(round(r.t - revoked, 2) for r in during if r.method != "GET")
        after = [r for r in log if r.t >= restored and r.is_create and r.status < 300]
        resumed = f"{after[0].t - restored:.1f} s" if after else "never"
        notes.append(
            f"while revoked: {len(during)} requests ({sum(1 for r in during if r.status == 401)} "
            f"× 401; {probes} probes GET, {work} other, at +{work_at[:5]} s); "
            f"first create accepted {resumed} "
            f"after restore (probe interval {PROBE_INTERVAL_SECONDS:g} s)"
        )
    return notes


# -- scenarios ---------------------------------------------------------------------------------
def scenarios() -> list[Scenario]:
    return [
        Scenario("backlog", "1. backlog, 1 replica, N=400, L=100/10 s", 400, 100),
        Scenario("replicas", "2. 3 replicas, one key, N=600, L=100/10 s", 600, 100, replicas=3),
        Scenario(
            "latency",
            "3. latency 300±100 ms, N=400, L=300/10 s, MAX_IN_FLIGHT=128",
            400,
            300,
            sandbox_flags=("--latency-ms", "300", "--latency-jitter-ms", "100", *SAME_FAULTS),
            daemon_env={"MAX_IN_FLIGHT": "128"},
        ),
        Scenario(
            "raise",
            "4. limit 60→600 at +15 s, →60 one window later, N=800",
            800,
            60,
            action=raise_limit(60, 600, 15.0),
            physical=False,
        ),
        Scenario(
            "revoke",
            "5. key revoked 20 s at +10 s, N=400, L=100/10 s",
            400,
            100,
            action=revoke_key(10.0, 20.0),
            physical=False,
        ),
        Scenario(
            "errors",
            "6. 20 % 503, N=400, L=100/10 s",
            400,
            100,
            sandbox_flags=("--error-rate", "0.2", "--error-status", "503", *SAME_FAULTS),
        ),
    ]


def dump(directory: Path, scenario: Scenario, seen: Observed) -> None:
    """The sandbox's request log of one side, times relative to its first request, one JSON
    object per line: for looking at a timeline when a figure needs explaining."""
    directory.mkdir(parents=True, exist_ok=True)
    side = seen.side.replace(" ", "-")
    start = seen.log[0].t if seen.log else 0.0
    with (directory / f"{scenario.name}-{side}.jsonl").open("w") as out:
        for r in seen.log:
            entry = {"t": round(r.t - start, 4), "method": r.method, "path": r.path}
            out.write(json.dumps({**entry, "status": r.status}) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


COLUMNS = (
    "scenario",
    "side",
    "requests",
    "429s",
    "429 %",
    "429s after 1st window",
    "drain s",
    "limit s",
    "drain ÷ limit",
    "sustained ÷ limit",
    "duplicates",
    "created",
)


def render(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines.extend("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in rows)
    lines.append("")
    lines.extend(
        f"- {row['scenario']} — {row['side']}: {row['notes']}" for row in rows if row["notes"]
    )
    lines.extend(f"- SKIPPED {reason}" for reason in skipped)
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with local_stack() as stack:
        for scenario in scenarios():
            if only is not None and scenario.name not in only:
                continue
            messages = _messages(scenario.n, scenario.name)
            for label in ("pivotal-sync", "seed guide"):
                started = time.monotonic()
                side = (
                    run_daemon(stack, scenario, messages)
                    if label == "pivotal-sync"
                    else run_baseline(scenario, messages)
                )
                try:
                    seen = await asyncio.wait_for(side, SIDE_TIMEOUT_SECONDS + 60)
                    row = figures(scenario, seen)
                except Exception as exc:  # a failed side is reported, not fatal
                    skipped.append(f"{scenario.title} — {label}: {type(exc).__name__}: {exc}")
                    print(f"[{scenario.name}/{label}] failed: {exc!r}", flush=True)
                    continue
                rows.append(row)
                if args.dump:
                    dump(Path(args.dump), scenario, seen)
                print(
                    f"[{scenario.name}/{label}] {time.monotonic() - started:.0f} s: "
                    + " · ".join(f"{c}: {_cell(row.get(c))}" for c in COLUMNS[2:])
                    + f" · {row['notes']}",
                    flush=True,
                )
    print()
    print(render(rows, skipped))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--dump", default="", help="write each side's request log here (JSONL)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
