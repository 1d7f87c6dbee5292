"""Operator tools, end to end: the real CLI as a subprocess against a running daemon.

`import` of the seed guide's scenario (killed halfway and run again), dead letters fixed and
redriven, replay of a time slice with and without --force, `status`, and the dry run. Every
command is configured only by the environment `run` uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devtools.local_stack import DaemonProcess, daemon_env
from devtools.sample_stream import ExpectedState, StreamSpec, generate
from tests.e2e.conftest import E2E_KEY, Scenario, ScenarioFactory

CUSTOMERS = 500
HEADER = (
    "external_id,name,slug,domain,status,plan,contact_external_id,contact_name,contact_email,"
    "onboarding_external_id,onboarding_phase"
)
# Line numbers (the header is line 1) of the bad rows, and what is wrong with each.
BAD_ROWS = {
    13: ",No Id,no-id,x.example,active,starter,,,,,",
    59: "bad_1,,bad-1,x.example,active,starter,,,,,",
    101: "bad_2,Bad Status,bad-2,x.example,thriving,starter,,,,,",
    150: "bad_3,Bad Email,bad-3,x.example,active,starter,bad_3_ct,Ann,ann-at-example,,",
    202: "bad_4,Bad Phase,bad-4,x.example,active,starter,,,,bad_4_ob,launched",
    260: "bad_5,Bad Contact,bad-5,x.example,active,starter,bad_5_ct,,bc@x.example,,",
    303: "bad_6,Taken Slug,imp-00001,x.example,active,starter,,,,,",
    377: "bad_7,Too Few,bad-7",
    420: "cus_imp_00003,Changed Name,imp-00003,c3.example,active,starter,,,,,",
    488: "bad_9,Bad Status,bad-9,x.example,ACTIVE,starter,,,,,",
}


def env_of(s: Scenario) -> dict[str, str]:
    return daemon_env(
        bootstrap_servers=s.broker.bootstrap_servers,
        topic=s.topic,
        group_id=s.group,
        database_url=s.database_url,
        api_url=f"{s.sandbox_url}/api/v1",
        api_key=E2E_KEY,
    )


def command(s: Scenario, *args: str) -> list[str]:
    _ = s
    return [sys.executable, "-m", "daemon.cli", *args]


def cli(s: Scenario, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `pivotal-sync ARGS` with the scenario's environment."""
    return subprocess.run(
        command(s, *args),
        env={**os.environ, **env_of(s)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_json(s: Scenario, *args: str, timeout: float = 60.0) -> Any:
    done = cli(s, *args, "--json", timeout=timeout)
    assert done.returncode in (0, 1), done.stderr
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def customer_rows(count: int) -> tuple[list[str], ExpectedState]:
    """The seed guide's customers, each with a contact and every other with an onboarding."""
    rows, expected = [], ExpectedState()
    for i in range(count):
        cid = f"cus_imp_{i:05d}"
        onboarding = (f"{cid}_ob", "program_design") if i % 2 == 0 else ("", "")
        rows.append(
            f"{cid},Customer {i},imp-{i:05d},c{i}.example,onboarding,growth,"
            f"{cid}_ct,Contact {i},person@c{i}.example,{onboarding[0]},{onboarding[1]}"
        )
        expected.customers[cid] = {
            "customer": cid,
            "name": f"Customer {i}",
            "slug": f"imp-{i:05d}",
            "domain": f"c{i}.example",
            "status": "onboarding",
            "plan": "growth",
        }
        expected.contacts[f"{cid}_ct"] = {
            "customer": cid,
            "name": f"Contact {i}",
            "email": f"person@c{i}.example",
        }
        if onboarding[0]:
            expected.onboardings[onboarding[0]] = {"customer": cid, "phase": "program_design"}
    return rows, expected


def write_csv(path: Path, rows: list[str], bad: dict[int, str]) -> Path:
    lines = [HEADER, *rows]
    for line in sorted(bad):
        lines.insert(line - 1, bad[line])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def eventually(check: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.3)


def settled(s: Scenario) -> bool:
    """The daemon committed everything on the topic and no redrive is in flight."""
    status = cli_json(s, "status")
    return bool(status["total_lag"] == 0 and status["dead_letter_states"]["retrying"] == 0)


async def test_an_import_killed_halfway_and_run_again_leaves_each_record_exactly_once(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    async with scenario(limit=3000, window=10) as s:
        rows, expected = customer_rows(CUSTOMERS)
        path = write_csv(tmp_path / "customers.csv", rows, BAD_ROWS)
        daemon = s.start_daemon()
        daemon.wait_ready()

        first = subprocess.Popen(
            command(s, "import", str(path), "--max-rate", "300", "--no-progress"),
            env={**os.environ, **env_of(s)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await eventually(lambda: daemon.total("pivotal_sync_events_consumed_total") >= 200)
        first.send_signal(signal.SIGKILL)
        first.wait()
        consumed = daemon.total("pivotal_sync_events_consumed_total")
        assert 200 <= consumed < 1200, "the first import was not stopped halfway"

        second = cli(
            s, "import", str(path), "--wait", "--wait-timeout", "50", "--json",
            "--metrics-url", daemon.url,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr  # 1: some rows were rejected
        report = json.loads(second.stdout)

        assert sorted(r["line"] for r in report["rejected"]) == sorted(BAD_ROWS)
        assert report["rows_read"] == CUSTOMERS + len(BAD_ROWS)
        assert report["changes"] == {"customer": 500, "contact": 500, "onboarding": 250}
        assert report["already_finished"] > 0
        assert report["caught_up"]
        stats = s.admin.stats()
        assert stats["duplicates"] == []
        assert s.problems(expected) == []
        live = {kind: counts["live"] for kind, counts in stats["records"].items()}
        assert report["succeeded"] == live == {"customer": 500, "contact": 500, "onboarding": 250}
        assert report["dead_lettered"] == {}
        assert report["requests"] == stats["requests_total"]

        third = cli_json(s, "import", str(path), "--wait", "--wait-timeout", "30")
        assert third["published"] == 0
        assert third["already_finished"] == 1250
        assert s.admin.stats()["requests_total"] == stats["requests_total"]

        status = cli_json(s, "status", "--metrics-url", daemon.url)
        assert status["total_lag"] == 0
        assert status["entities"] == {"customer": 500, "contact": 500, "onboarding": 250}
        assert status["quota"]["limit"] == 3000


async def test_dead_letters_fixed_at_the_source_are_retried_once_and_all_succeed(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    async with scenario(limit=3000, window=10) as s:
        rows, expected = customer_rows(20)
        # Pivotal refuses the plan of five customers until someone fixes the account.
        for i in range(0, 20, 4):
            rows[i] = rows[i].replace(",growth,", ",legacy,")
            expected.customers[f"cus_imp_{i:05d}"]["plan"] = "legacy"
        s.admin.set_rule({"kind": "customer", "reject_field": "plan", "values": ["legacy"]})
        path = write_csv(tmp_path / "customers.csv", rows, {})
        # Children of a refused customer are parked (parent_missing) after 2 s, not 5 min.
        s.start_daemon(PARENT_TIMEOUT_SECONDS="2").wait_ready()

        report = cli_json(s, "import", str(path), "--wait", "--wait-timeout", "40")
        # The five customers and their children (whose parent never came) are parked.
        assert report["pending"] == 0
        assert report["dead_lettered"] == {"http_400": 5, "parent_missing": 5 + 5}
        listed = cli_json(s, "dead-letters", "list", "--reason", "http_400")
        assert len(listed) == 5
        assert {row["state"] for row in listed} == {"open"}

        before = s.admin.stats()["requests_total"]
        dry = cli_json(s, "dead-letters", "retry", "--all", "--dry-run")
        assert dry["dry_run"]
        assert len(dry["would_send"]) == len(cli_json(s, "dead-letters", "list"))
        assert s.admin.stats()["requests_total"] == before

        s.admin.set_rule({"kind": "customer", "relax_field": "plan"})
        retried = cli_json(s, "dead-letters", "retry", "--all")
        assert sorted(retried["sent"]) == sorted(dry["would_send"])
        await eventually(lambda: settled(s))

        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []
        states = {row["state"] for row in cli_json(s, "dead-letters", "list")}
        assert states == {"resolved"}
        again = cli_json(s, "dead-letters", "retry", "--all")
        assert again["sent"] == []
        assert {item["why"] for item in again["skipped"]} == {"already succeeded"}

        purged = cli(s, "dead-letters", "purge", "--state", "resolved")
        assert purged.returncode == 0, purged.stderr
        assert cli_json(s, "dead-letters", "list") == []


async def test_a_dead_letter_that_keeps_failing_is_redriven_at_most_three_times(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    async with scenario(limit=3000, window=10) as s:
        rows, _ = customer_rows(1)
        s.admin.set_rule({"kind": "customer", "reject_field": "slug"})
        path = write_csv(tmp_path / "customers.csv", rows[:1], {})
        s.start_daemon(PARENT_TIMEOUT_SECONDS="2").wait_ready()
        cli_json(s, "import", str(path), "--wait", "--wait-timeout", "30")
        [letter] = cli_json(s, "dead-letters", "list", "--reason", "http_400")
        for attempt in range(1, 4):
            retried = cli_json(s, "dead-letters", "retry", str(letter["id"]))
            assert retried["sent"] == [letter["id"]]
            await eventually(lambda: settled(s))
            shown = cli_json(s, "dead-letters", "show", str(letter["id"]))
            assert (shown["state"], shown["retry_count"]) == ("open", attempt)
            assert shown["headers"]["pivotal-sync-redrive"] == str(attempt)
        refused = cli_json(s, "dead-letters", "retry", str(letter["id"]))
        assert refused["sent"] == []
        assert refused["skipped"][0]["why"] == "redriven 3 times already (the limit)"


async def test_replay_resends_nothing_finished_and_with_force_reapplies_without_duplicates(
    scenario: ScenarioFactory,
) -> None:
    async with scenario(limit=3000, window=10) as s:
        spec = StreamSpec(
            customers=40,
            malformed=3,
            prefix="rp",
            with_sequence=False,
            customer_delete_fraction=0.0,
            contact_delete_fraction=0.0,
        )
        started = time.time() - 1
        expected = await s.publish(generate(spec))
        s.start_daemon().wait_ready()
        await s.wait_caught_up()
        sent = s.admin.stats()["requests_total"]

        start = datetime.fromtimestamp(started, UTC).isoformat()
        plain = cli_json(s, "replay", "--from", start, "--to", "now")
        assert plain["matched"] == len(s.messages)
        assert plain["published"] == 0
        assert plain["already_finished"] == expected.valid
        await asyncio.sleep(2.0)
        assert s.admin.stats()["requests_total"] == sent

        forced = cli_json(s, "replay", "--from", "10m", "--entity", "rp_00007", "--force")
        assert forced["published"] > 0
        assert forced["forgotten"] == forced["published"]
        await eventually(lambda: settled(s))
        stats = s.admin.stats()
        assert stats["by_method"].get("PATCH", 0) > 0
        assert stats["requests_total"] > sent
        assert stats["duplicates"] == []
        assert s.problems(expected) == []


async def test_a_dry_run_sends_nothing_and_prints_the_planned_requests(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    async with scenario(limit=3000, window=10) as s:
        rows, _ = customer_rows(10)
        path = write_csv(tmp_path / "customers.csv", rows, {})
        assert cli(s, "migrate").returncode == 0
        dry_import = cli_json(s, "import", str(path), "--dry-run")
        assert dry_import["published"] == 0
        daemon = DaemonProcess(env_of(s), tmp_path / "dry-run.log", args=("--dry-run",))
        try:
            daemon.wait_ready()
            cli_json(s, "import", str(path))
            log = daemon.log_path

            def planned() -> list[dict[str, Any]]:
                lines = log.read_text(errors="replace").splitlines()
                events = [json.loads(line) for line in lines if line.startswith("{")]
                return [e for e in events if e.get("event") == "request_planned"]

            def posts() -> list[dict[str, Any]]:
                return [p for p in planned() if p.get("method") == "POST"]

            await eventually(lambda: len(posts()) >= 10 + 10 + 5)
        finally:
            daemon.stop()
        assert s.admin.requests() == []
        assert s.admin.stats()["requests_total"] == 0
        assert {p["path"].split("/")[-1] for p in posts()} == {
            "customers",
            "contacts",
            "onboardings",
        }
