"""Pipeline benchmarks: coalescing, the daemon's own ceiling, memory under a large backlog.

Each scenario runs the real `pivotal-sync run` process against the local stack (tansu,
Postgres, the sandbox) and prints one row; the table ends with the goals from issue 3.

1. coalescing — customers already exist; a backlog of 3 updates each is published; the daemon
   starts. Side by side: requests the daemon sent, and the requests a one-request-per-event
   sync (the seed script's approach) needs for the same events. Goal: ≤ 1.05 requests per
   entity (3.0 without coalescing).
2. throughput — the sandbox's rate limit is out of reach (1e9 per window), so the figure is the
   daemon's own ceiling, checkpointing on. Goal ≥ 1,000 events/s.
3. memory — a 200,000-event backlog; peak RSS (VmHWM) of the daemon process while it works
   through it for a bounded time. Goal ≤ 150 MB.

    python -m bench.pipeline [--only coalescing,throughput,memory] [--backlog 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemon.sandbox.testing import SandboxAdmin, running_sandbox
from devtools.local_services import Broker, Postgres, create_database
from devtools.local_stack import DaemonProcess, broker_settings, committed_offsets, daemon_env
from devtools.sample_stream import Message, StreamSpec, generate, publish

KEY = "pivotal_live_bench_0001"
PARTITIONS = 3
# The largest limit the limiter accepts as plausible (daemon.ratelimit.MAX_LIMIT): out of reach.
HUGE_LIMIT = 1_000_000


@dataclass
class Stack:
    broker: Broker
    postgres: Postgres
    workdir: Path


@contextmanager
def local_stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="pivotal-sync-bench-"))
    with (
        Broker.start(log_dir=workdir) as broker,
        Postgres.start(os.environ.get("PIVOTAL_SYNC_DATABASE_URL")) as postgres,
    ):
        yield Stack(broker, postgres, workdir)


async def _prepare(stack: Stack) -> tuple[str, str, str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    topic = f"bench-{name}"
    await stack.broker.create_topic(topic, partitions=PARTITIONS)
    return topic, name, await create_database(stack.postgres.dsn, name)


def _daemon(
    stack: Stack, topic: str, database_url: str, sandbox_url: str, log: str, **extra: str
) -> DaemonProcess:
    env = daemon_env(
        bootstrap_servers=stack.broker.bootstrap_servers,
        topic=topic,
        group_id=f"group-{topic}",
        database_url=database_url,
        api_url=f"{sandbox_url}/api/v1",
        api_key=KEY,
        LOG_LEVEL="warning",
        RATE_LIMIT_WINDOW_SECONDS="10",
        **broker_settings(stack.broker),
        **extra,
    )
    return DaemonProcess(env, stack.workdir / log)


async def _wait_caught_up(
    stack: Stack, topic: str, ends: dict[int, int], daemon: DaemonProcess, limit_seconds: float
) -> float:
    started = time.monotonic()
    while True:
        committed = await committed_offsets(
            stack.broker.bootstrap_servers, f"group-{topic}", topic, PARTITIONS
        )
        if all(committed.get(p, -1) >= end for p, end in ends.items()):
            return time.monotonic() - started
        if not daemon.alive() or time.monotonic() - started > limit_seconds:
            raise RuntimeError(f"daemon did not catch up: {committed} vs {ends}\n{daemon.tail()}")
        await asyncio.sleep(0.2)


def _updates_backlog(customers: int, prefix: str) -> tuple[list[Message], list[Message]]:
    creates = generate(
        StreamSpec(
            customers=customers,
            updates_per_customer=0,
            contacts_per_customer=0,
            onboarding_fraction=0,
            customer_delete_fraction=0,
            malformed=0,
            prefix=prefix,
        )
    )
    updates: list[Message] = []
    for round_ in range(3):
        for i in range(customers):
            cid = f"{prefix}_{i:05d}"
            event = {
                "specversion": "1.0",
                "id": f"upd_{prefix}_{i}_{round_}",
                "source": "bench",
                "type": "customer.updated",
                "subject": cid,
                "data": {"mrr": 1000 * round_ + i, "plan": f"plan-{round_}"},
            }
            updates.append(Message(key=cid.encode(), value=json.dumps(event).encode()))
    return creates, updates


async def coalescing(stack: Stack, customers: int) -> dict[str, object]:
    topic, _, database_url = await _prepare(stack)
    creates, updates = _updates_backlog(customers, "coal")
    with (
        running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url,
        SandboxAdmin(url) as admin,
    ):
        ends = await publish(stack.broker.bootstrap_servers, topic, creates)
        daemon = _daemon(stack, topic, database_url, url, "coalescing-1.log")
        await _wait_caught_up(stack, topic, ends, daemon, 300)
        daemon.stop()
        before = admin.stats()["requests_total"]
        # The backlog builds up while no daemon runs, as after an outage or a deploy.
        ends = await publish(stack.broker.bootstrap_servers, topic, updates)
        daemon = _daemon(stack, topic, database_url, url, "coalescing-2.log")
        await _wait_caught_up(stack, topic, ends, daemon, 300)
        daemon.stop()
        sent = admin.stats()["requests_total"] - before
    return {
        "scenario": "backlog of 3 updates per customer",
        "entities": customers,
        "events": len(updates),
        "requests pivotal-sync": sent,
        "requests one-per-event": len(updates),
        "requests/entity pivotal-sync": round(sent / customers, 3),
        "requests/entity one-per-event": round(len(updates) / customers, 3),
        "goal": "≤ 1.05",
    }


async def throughput(stack: Stack, customers: int) -> dict[str, object]:
    topic, _, database_url = await _prepare(stack)
    messages = generate(StreamSpec(customers=customers, malformed=0, prefix="tput"))
    ends = await publish(stack.broker.bootstrap_servers, topic, messages)
    with (
        running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url,
        SandboxAdmin(url) as admin,
    ):
        daemon = _daemon(stack, topic, database_url, url, "throughput.log", MAX_IN_FLIGHT="64")
        daemon.wait_ready()
        seconds = await _wait_caught_up(stack, topic, ends, daemon, 600)
        requests = admin.stats()["requests_total"]
        daemon.stop()
    return {
        "scenario": "end-to-end, rate limit out of reach",
        "events": len(messages),
        "requests": requests,
        "seconds": round(seconds, 1),
        "events/s": round(len(messages) / seconds),
        "requests/s": round(requests / seconds),
        "goal": "≥ 1,000 events/s",
    }


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def memory(stack: Stack, backlog: int, seconds: float) -> dict[str, object]:
    topic, _, database_url = await _prepare(stack)
    per_customer = 8.7  # events per customer in the generated stream, measured
    messages = generate(
        StreamSpec(customers=int(backlog / per_customer), malformed=0, prefix="mem")
    )
    ends = await publish(stack.broker.bootstrap_servers, topic, messages)
    with running_sandbox("--window-seconds", "10", "--key", f"{KEY}:{HUGE_LIMIT}") as url:
        daemon = _daemon(stack, topic, database_url, url, "memory.log", MAX_IN_FLIGHT="64")
        daemon.wait_ready()
        started, peak = time.monotonic(), 0.0
        while time.monotonic() - started < seconds and daemon.alive():
            peak = max(peak, _peak_rss_mb(daemon.process.pid))
            await asyncio.sleep(0.5)
            committed = await committed_offsets(
                stack.broker.bootstrap_servers, f"group-{topic}", topic, PARTITIONS
            )
            if all(committed.get(p, -1) >= end for p, end in ends.items()):
                break
        finished = daemon.finished()
        peak = max(peak, _peak_rss_mb(daemon.process.pid))
        daemon.stop()
    return {
        "scenario": "200k-event backlog, peak RSS",
        "events in topic": len(messages),
        "events finished in the run": int(finished),
        "peak RSS MB": round(peak, 1),
        "goal": "≤ 150 MB",
    }


async def _main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    with local_stack() as stack:
        rows = []
        if "coalescing" in only:
            rows.append(await coalescing(stack, args.customers))
        if "throughput" in only:
            rows.append(await throughput(stack, args.throughput_customers))
        if "memory" in only:
            rows.append(await memory(stack, args.backlog, args.memory_seconds))
    for row in rows:
        print(" · ".join(f"{k}: {v}" for k, v in row.items()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="coalescing,throughput,memory")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--throughput-customers", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--memory-seconds", type=float, default=90.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
