"""Replicas on one key: the shared quota ledger against the header-based limiter, in one run.

Each scenario runs twice, one side after the other, each against its own sandbox (same key,
window W = 10 s) and its own topic and database: `today` is the real `pivotal-sync run` with
`PIVOTAL_SYNC_QUOTA_LEDGER=false` (each replica infers the others from the headers), `ledger`
the same build with the ledger on (the default). Figures come from the sandbox's request log, as
in bench/ratelimit_e2e.py (ratios to the physical limit ⌈N/L − 1⌉·W).

Scenarios (N customer creates, L = 100 per 10 s):

1. together: 3 replicas start at once, N = 600.
2. staggered: 3 replicas started 1 s apart, N = 600; shares of each while all have work,
   from the daemons' metrics sampled every 0.5 s.
3. restart: 3 replicas, one SIGKILLed at +15 s and started again at once, N = 600.
4. single: 1 replica, N = 400 (regression guard).
5. learn: 1 replica, window hint unset (today: the old default, 60 s), N = 300.
6. outage: 3 replicas, Postgres unreachable (a proxy in front of it cut) from +15 s for 15 s.

The ledger's cost: round trips (calls of `quota_reserve`) and their milliseconds, per request,
from `pivotal_sync_quota_ledger_call_duration_seconds`.

    python -m bench.replicas [--only together,staggered,restart,single,learn,outage]
        [--sides today,ledger]   (the daemons' logs at info: BENCH_DAEMON_LOG_LEVEL=info)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.ratelimit_e2e import (
    KEY,
    PARTITIONS,
    WINDOW,
    Observed,
    Sandbox,
    Scenario,
    Stack,
    _messages,
    _sandbox_args,
    _wait_caught_up,
    figures,
    local_stack,
    render,
)
from daemon.sandbox.testing import running_sandbox
from devtools.fault_proxy import Fault, FaultProxy
from devtools.local_services import create_database
from devtools.local_stack import DaemonProcess, broker_settings, daemon_env
from devtools.sample_stream import Message, publish

SAMPLE_SECONDS = 0.5
ACTION_AT_SECONDS = 15.0
OUTAGE_SECONDS = 15.0
SIDES = {"today": {"QUOTA_LEDGER": "false"}, "ledger": {"QUOTA_LEDGER": "true"}}


@dataclass
class Case:
    scenario: Scenario
    stagger_seconds: float = 0.0
    restart: bool = False
    outage: bool = False
    window_hint: dict[str, str | None] = field(
        default_factory=lambda: {"today": str(int(WINDOW)), "ledger": str(int(WINDOW))}
    )


def cases() -> list[Case]:
    return [
        Case(Scenario("together", "1. 3 replicas start together, N=600", 600, 100, replicas=3)),
        Case(
            Scenario("staggered", "2. 3 replicas started 1 s apart, N=600", 600, 100, replicas=3),
            stagger_seconds=1.0,
        ),
        Case(
            Scenario(
                "restart", "3. 1 of 3 SIGKILLed at +15 s, restarted, N=600", 600, 100, replicas=3
            ),
            restart=True,
        ),
        Case(Scenario("single", "4. 1 replica, N=400", 400, 100)),
        Case(
            Scenario("learn", "5. window hint unset (today: 60 s), real 10 s, N=300", 300, 100),
            window_hint={"today": "60", "ledger": None},
        ),
        Case(
            Scenario(
                "outage", "6. Postgres cut 15 s at +15 s, 3 replicas, N=600", 600, 100, replicas=3
            ),
            outage=True,
        ),
    ]


@dataclass
class Samples:
    """Per-replica request counts and pending events over time, from /metrics."""

    rows: list[tuple[float, list[float], list[float]]] = field(default_factory=list)

    def shares_while_all_busy(self) -> list[float] | None:
        busy = [r for r in self.rows if r[2] and all(p > 0 for p in r[2])]
        if len(busy) < 2 or len(busy[0][1]) != len(busy[-1][1]):
            return None
        deltas = [b - a for a, b in zip(busy[0][1], busy[-1][1], strict=True)]
        fair = sum(deltas) / len(deltas)
        return [d / fair for d in deltas] if fair > 0 else None


async def sample(daemons: list[DaemonProcess], samples: Samples) -> None:
    while True:
        metrics = await asyncio.gather(*(asyncio.to_thread(d.metrics) for d in daemons))
        requests = [_sum(m, "pivotal_sync_api_requests_total") for m in metrics]
        pending = [m.get("pivotal_sync_pending_events", 0.0) for m in metrics]
        samples.rows.append((time.time(), requests, pending))
        await asyncio.sleep(SAMPLE_SECONDS)


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.partition("{")[0] == name)


@contextmanager
def maybe_proxy(case: Case, dsn: str) -> Iterator[tuple[FaultProxy | None, str]]:
    """For the outage scenario, a proxy in front of Postgres and the DSN through it."""
    if not case.outage:
        yield None, dsn
        return
    with FaultProxy.for_postgres(dsn) as (proxy, through):
        yield proxy, through


async def run_side(stack: Stack, case: Case, side: str, messages: list[Message]) -> Observed:
    scenario = case.scenario
    name = f"rep_{scenario.name}_{side}_{uuid.uuid4().hex[:6]}"
    topic, group = f"topic-{name}", f"group-{name}"
    await stack.broker.create_topic(topic, partitions=PARTITIONS)
    database_url = await create_database(stack.postgres.dsn, name)
    ends = await publish(stack.broker.bootstrap_servers, topic, messages)
    marks: dict[str, float] = {}
    samples = Samples()
    cost: dict[str, float] = {}
    with running_sandbox(*_sandbox_args(scenario)) as url:
        sandbox = Sandbox(url)
        daemons: list[DaemonProcess] = []
        with maybe_proxy(case, database_url) as (proxy, daemon_database_url):
            extra: dict[str, str] = {**SIDES[side], **broker_settings(stack.broker)}
            hint = case.window_hint[side]
            if hint is not None:
                extra["RATE_LIMIT_WINDOW_SECONDS"] = hint
            env = daemon_env(
                bootstrap_servers=stack.broker.bootstrap_servers,
                topic=topic,
                group_id=group,
                database_url=daemon_database_url,
                api_url=f"{url}/api/v1",
                api_key=KEY,
                LOG_LEVEL=os.environ.get("BENCH_DAEMON_LOG_LEVEL", "warning"),
                AUTH_PROBE_INTERVAL_SECONDS="2",
                **extra,
            )
            sampler: asyncio.Task[None] | None = None
            action: asyncio.Task[None] | None = None
            try:
                for i in range(scenario.replicas):
                    if i and case.stagger_seconds:
                        await asyncio.sleep(case.stagger_seconds)
                    daemons.append(DaemonProcess(env, stack.workdir / f"{name}-{i}.log"))
                await asyncio.gather(*(asyncio.to_thread(d.wait_ready) for d in daemons))
                sampler = asyncio.create_task(sample(daemons, samples))
                action = asyncio.create_task(
                    act(case, sandbox, daemons, proxy, env, name, stack, marks)
                )
                await _wait_caught_up(stack, group, topic, ends, daemons)
                await action
                per_replica = [d.total("pivotal_sync_api_requests_total") for d in daemons]
                for d in daemons:
                    m = d.metrics()
                    for key in ("count", "sum"):
                        metric = f"pivotal_sync_quota_ledger_call_duration_seconds_{key}"
                        cost[key] = cost.get(key, 0.0) + m.get(metric, 0.0)
                    cost["fallbacks"] = cost.get("fallbacks", 0.0) + m.get(
                        "pivotal_sync_quota_ledger_fallbacks_total", 0.0
                    )
                return Observed(
                    side=side,
                    log=await sandbox.log(),
                    stats=await sandbox.stats(),
                    marks={
                        **marks,
                        **{f"cost_{k}": v for k, v in cost.items()},
                        **{
                            f"share_{i}": s
                            for i, s in enumerate(samples.shares_while_all_busy() or [])
                        },
                    },
                    per_replica=per_replica,
                    dead_letters=sum(d.total("pivotal_sync_dead_letters_total") for d in daemons),
                )
            finally:
                for task in (sampler, action):
                    if task is not None:
                        task.cancel()
                for d in daemons:
                    await asyncio.to_thread(d.stop)
                await sandbox.close()


async def act(
    case: Case,
    sandbox: Sandbox,
    daemons: list[DaemonProcess],
    proxy: FaultProxy | None,
    env: dict[str, str],
    name: str,
    stack: Stack,
    marks: dict[str, float],
) -> None:
    if not (case.restart or case.outage):
        return
    first = await sandbox.wait_first_request()
    await asyncio.sleep(max(0.0, first + ACTION_AT_SECONDS - time.time()))
    if case.restart:
        # Kill and replace with no await between: the caught-up check never sees a dead one.
        victim = daemons[0]
        marks["killed"] = time.time()
        victim.process.kill()
        daemons[0] = DaemonProcess(env, stack.workdir / f"{name}-0-restarted.log")
        marks["restarted"] = time.time()
        await asyncio.to_thread(victim.kill)  # reaps it
    if proxy is not None:
        marks["cut"] = time.time()
        proxy.set(Fault.REFUSE)
        await asyncio.sleep(OUTAGE_SECONDS)
        proxy.heal()
        marks["restored"] = time.time()


def row_for(case: Case, seen: Observed) -> dict[str, Any]:
    row = figures(case.scenario, seen)
    notes = [row["notes"]]
    shares = [v for k, v in sorted(seen.marks.items()) if k.startswith("share_")]
    if shares and case.scenario.replicas > 1:
        notes.append("shares while all had work " + "/".join(f"{s:.2f}" for s in shares))
    if "killed" in seen.marks:
        after = [r for r in seen.log if r.t >= seen.marks["restarted"]]
        notes.append(f"429s after the restart {sum(1 for r in after if r.status == 429)}")
    if "cut" in seen.marks:
        during = [r for r in seen.log if seen.marks["cut"] <= r.t < seen.marks["restored"] + WINDOW]
        notes.append(
            f"during the outage and one window after: {len(during)} requests, "
            f"{sum(1 for r in during if r.status == 429)} × 429"
        )
    calls = seen.marks.get("cost_count", 0.0)
    if calls:
        requests = len(seen.log) or 1
        notes.append(
            f"ledger: {calls / requests:.2f} round trips per request, "
            f"{1000 * seen.marks['cost_sum'] / requests:.2f} ms per request "
            f"({1000 * seen.marks['cost_sum'] / calls:.2f} ms per call), "
            f"fallbacks {seen.marks.get('cost_fallbacks', 0):.0f}"
        )
    row["notes"] = "; ".join(notes)
    return row


async def _main(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with local_stack() as stack:
        for case in cases():
            if only is not None and case.scenario.name not in only:
                continue
            messages = _messages(case.scenario.n, case.scenario.name)
            for side in args.sides.split(","):
                started = time.monotonic()
                try:
                    seen = await run_side(stack, case, side, messages)
                except Exception as exc:  # a failed side is reported, not fatal
                    skipped.append(f"{case.scenario.title} — {side}: {type(exc).__name__}: {exc}")
                    print(f"[{case.scenario.name}/{side}] failed: {exc!r}", flush=True)
                    continue
                row = row_for(case, seen)
                rows.append(row)
                print(
                    f"[{case.scenario.name}/{side}] {time.monotonic() - started:.0f} s: "
                    f"drain ÷ limit {row['drain ÷ limit']}, 429s {row['429s']}; {row['notes']}",
                    flush=True,
                )
    print(render(rows, skipped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--sides", default=",".join(SIDES), help="today,ledger or one of them")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
