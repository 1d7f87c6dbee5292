"""Operator subcommands: `import`, `dead-letters`, `replay`, `status`.

This module owns the terminal side only: arguments, progress bars and the text every command
prints. The work lives in its rooms, imported lazily so `pivotal-sync --help` stays fast:
`backfill` (import), `redrive` (dead letters and replay), `status`. Configuration comes from
the same environment as `run` (`load_settings()`); a bad setting is a ConfigError that
`cli.main` turns into exit code 2.

Exit codes: 0 done, 1 done with problems (rejected rows, dead letters, nothing matched,
unreachable dependency), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from daemon.backfill import ImportReport
    from daemon.config import Settings
    from daemon.redrive import Filters, Letter, ReplayReport, RetryPlan, RetryResult

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
# A non-terminal (a CI log, a pipe) gets a progress line at most this often.
PROGRESS_LINE_INTERVAL_SECONDS = 5.0
PROGRESS_BAR_WIDTH = 30
STATES = ("open", "retrying", "resolved")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# ---------------------------------------------------------------------------------------------
# Small pieces: times, progress, running a coroutine.


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 / ISO 8601 time (naive = UTC), a date, `now`, or an age like 15m, 2h, 3d."""
    value = text.strip()
    moment = now or datetime.now(UTC)
    if value == "now":
        return moment
    match = _RELATIVE.match(value)
    if match:
        return moment - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 2026-11-26T10:00:00Z, 2026-11-26, now, or 15m/2h/3d"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class ProgressBar:
    """`bar(done, total)`: a bar on a terminal, a line every few seconds elsewhere."""

    def __init__(self, label: str, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = done >= total
        if self.tty:
            if final or now - self._last >= 0.1:
                self._last = now
                self.stream.write("\r" + self.line(done, total))
                self._drawn = True
                if final:
                    self.close()
        elif final or now - self._last >= PROGRESS_LINE_INTERVAL_SECONDS:
            self._last = now
            self.stream.write(self.line(done, total) + "\n")
        self.stream.flush()

    def line(self, done: int, total: int) -> str:
        share = 1.0 if total <= 0 else min(1.0, done / total)
        filled = round(share * PROGRESS_BAR_WIDTH)
        bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
        return f"{self.label:<10} [{bar}] {done}/{total} {share:4.0%}"

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run one command's coroutine; an unreachable dependency is a message, not a traceback."""
    import asyncpg  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        return asyncio.run(coroutine)
    except asyncpg.UndefinedTableError:
        _error("the daemon's tables do not exist yet: run `pivotal-sync migrate` first")
        return EXIT_PROBLEMS
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as exc:
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_PROBLEMS


def _error(message: str) -> None:
    print(f"pivotal-sync: {message}", file=sys.stderr)


def _settings() -> Settings:
    from daemon.config import load_settings  # noqa: PLC0415

    settings = load_settings()
    settings.require_database_url()
    return settings


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------
# import


def _import(args: argparse.Namespace) -> int:
    from daemon import backfill  # noqa: PLC0415

    if args.file is None and args.contacts is None and args.onboardings is None:
        _error("import: give a customers FILE, --contacts FILE or --onboardings FILE")
        return EXIT_USAGE
    settings = _settings()
    try:
        plan = backfill.read_changes(
            args.file, contacts=args.contacts, onboardings=args.onboardings
        )
    except (backfill.ImportFileError, OSError, UnicodeDecodeError) as exc:
        _error(f"import: {exc}")
        return EXIT_USAGE
    options = backfill.ImportOptions(
        wait=args.wait,
        wait_timeout_seconds=args.wait_timeout,
        metrics_url=args.metrics_url,
        dry_run=args.dry_run,
        max_rate=args.max_rate,
    )
    show = not args.no_progress and not args.json
    publishing = ProgressBar("published", enabled=show)
    waiting = ProgressBar("finished", enabled=show)

    async def run() -> int:
        report = await backfill.run_import(
            settings, plan, options, on_publish=publishing, on_wait=waiting
        )
        publishing.close()
        waiting.close()
        if args.json:
            _print_json(report.as_json())
        else:
            print(render_import(report, dry_run=args.dry_run))
        problems = report.rejected or report.dead_lettered or report.pending
        return EXIT_PROBLEMS if problems else EXIT_OK

    return _run(run())


def _kinds(counts: dict[str, int]) -> str:
    return " · ".join(
        f"{counts.get(kind, 0)} {kind}s" for kind in ("customer", "contact", "onboarding")
    )


def render_import(report: ImportReport, *, dry_run: bool = False, max_rejected: int = 50) -> str:
    lines = [
        f"rows read         {report.rows_read}",
        f"rejected          {len(report.rejected)}",
    ]
    lines += [f"  {rejection}" for rejection in report.rejected[:max_rejected]]
    if len(report.rejected) > max_rejected:
        lines.append(f"  … and {len(report.rejected) - max_rejected} more (--json lists all)")
    if report.ignored_columns:
        lines.append(f"ignored columns   {', '.join(report.ignored_columns)}")
    lines.append(f"changes           {_kinds(report.changes)}")
    lines.append(f"already finished  {report.already_finished} (skipped: the daemon has them)")
    verb = "would publish" if dry_run else "published"
    todo = sum(report.changes.values()) - report.already_finished
    lines.append(f"{verb:<17} {todo if dry_run else report.published}")
    if report.waited:
        lines.append(f"daemon, from its checkpoint tables ({report.seconds} s):")
        lines.append(f"  succeeded       {_kinds(report.succeeded)}")
        dead = sum(report.dead_lettered.values())
        lines.append(f"  dead-lettered   {dead}")
        for reason, count in sorted(report.dead_lettered.items()):
            lines.append(
                f"    {reason:<20} {count}  (pivotal-sync dead-letters list --reason {reason})"
            )
        if report.pending:
            lines.append(
                f"  not finished    {report.pending} (timed out waiting; run it again with --wait)"
            )
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))
        lines.append(f"  outcomes        {outcomes or '-'}")
        lines.append(
            f"  requests spent  {report.requests} (one per sent event, plus dead-letter attempts)"
        )
        if report.daemon_requests is not None:
            lines.append(
                f"  daemon requests {report.daemon_requests:g} "
                "(its pivotal_sync_api_requests_total grew by this during the wait)"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# dead-letters


def _filters(args: argparse.Namespace) -> Filters:
    from daemon.redrive import Filters  # noqa: PLC0415

    return Filters(
        reason=args.reason,
        status=args.status,
        entity=args.entity,
        since=args.since,
        state=getattr(args, "state", None),
        limit=getattr(args, "limit", 100),
    )


def _dead_letters_list(args: argparse.Namespace) -> int:
    from daemon import redrive  # noqa: PLC0415
    from daemon.status import Tables  # noqa: PLC0415

    settings = _settings()

    async def run() -> int:
        async with await Tables.connect(settings.require_database_url()) as tables:
            found = await redrive.letters(tables, _filters(args))
        if args.json:
            _print_json([letter_json(letter, full=False) for letter in found])
        else:
            print(render_letters(found))
        return EXIT_OK

    return _run(run())


def _dead_letters_show(args: argparse.Namespace) -> int:
    from daemon import redrive  # noqa: PLC0415
    from daemon.status import Tables  # noqa: PLC0415

    settings = _settings()

    async def run() -> int:
        async with await Tables.connect(settings.require_database_url()) as tables:
            found = await redrive.letters(tables, redrive.Filters(), [args.id])
        if not found:
            _error(f"no dead letter {args.id}")
            return EXIT_PROBLEMS
        letter = letter_json(found[0], full=True)
        if args.json:
            _print_json(letter)
        else:
            for name, value in letter.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                print(f"{name:<16} {text}")
        return EXIT_OK

    return _run(run())


def _dead_letters_retry(args: argparse.Namespace) -> int:
    from daemon import redrive  # noqa: PLC0415
    from daemon.status import Tables  # noqa: PLC0415

    filters = _filters(args)
    if not args.ids and not filters.any and not args.all:
        _error("dead-letters retry: name IDs, give a filter (--reason, --since, …) or --all")
        return EXIT_USAGE
    settings = _settings()
    if not args.ids:
        filters = dataclasses.replace(filters, limit=redrive.MAX_ROWS)

    async def run() -> int:
        async with await Tables.connect(settings.require_database_url()) as tables:
            found = await redrive.letters(tables, filters, args.ids)
            plan = redrive.plan_retry(found, args.max_redrives)
            if args.dry_run:
                result = None
            else:
                bar = ProgressBar("redriven", enabled=not args.json)
                result = await redrive.retry(
                    settings, tables, plan, max_redrives=args.max_redrives, progress=bar
                )
                bar.close()
        if args.json:
            _print_json(retry_json(plan, result))
        else:
            print(render_retry(plan, result))
        return EXIT_OK if plan.send and (result is None or result.sent) else EXIT_PROBLEMS

    return _run(run())


def _dead_letters_purge(args: argparse.Namespace) -> int:
    from daemon import redrive  # noqa: PLC0415
    from daemon.status import Tables  # noqa: PLC0415

    filters = _filters(args)
    if args.all and not args.yes:
        _error("dead-letters purge --all deletes every dead letter: add --yes to confirm")
        return EXIT_USAGE
    if not args.all and not args.ids and not filters.any:
        _error("dead-letters purge: name IDs, give a filter (--reason, --state, …) or --all --yes")
        return EXIT_USAGE
    settings = _settings()

    async def run() -> int:
        async with await Tables.connect(settings.require_database_url()) as tables:
            if args.dry_run:
                wide = dataclasses.replace(filters, limit=redrive.MAX_ROWS)
                found = await redrive.letters(tables, wide, args.ids)
                print(f"would delete {len(found)} dead letters")
                return EXIT_OK
            deleted = await redrive.purge(tables, filters, args.ids, everything=args.all)
        print(f"deleted {deleted} dead letters")
        return EXIT_OK

    return _run(run())


def letter_json(letter: Letter, *, full: bool) -> dict[str, Any]:
    row = letter.row
    data: dict[str, Any] = {
        "id": row.id,
        "state": letter.state,
        "event_id": row.event_id,
        "reason": row.dead_letter.reason,
        "status": row.dead_letter.status,
        "entity": None if row.entity is None else str(row.entity),
        "detail": row.dead_letter.detail,
        "last_seen": row.last_seen.isoformat(timespec="seconds"),
        "retry_count": row.retry_count,
    }
    if full:
        data |= {
            "first_seen": row.first_seen.isoformat(timespec="seconds"),
            "retried_at": None if row.retried_at is None else row.retried_at.isoformat(),
            "times_seen": row.times_seen,
            "attempts": row.dead_letter.attempts,
            "response_body": row.dead_letter.response_body,
            "record": f"{row.record.topic}:{row.record.partition}:{row.record.offset}",
            "key": None if row.record.key is None else row.record.key.decode("utf-8", "replace"),
            "headers": {k: v.decode("utf-8", "replace") for k, v in row.record.headers},
            "value": _value(row.record.value),
        }
    return data


def _value(value: bytes | None) -> Any:
    if value is None:
        return None
    text = value.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def render_letters(found: list[Letter]) -> str:
    if not found:
        return "no dead letters match"
    header = f"{'ID':>6}  {'STATE':<9} {'REASON':<20} {'HTTP':>4}  {'ENTITY':<28} "
    lines = [header + f"{'LAST SEEN':<20} R  DETAIL"]
    for letter in found:
        row = letter.row
        status = "-" if row.dead_letter.status is None else str(row.dead_letter.status)
        entity = "-" if row.entity is None else str(row.entity)
        seen = row.last_seen.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = row.dead_letter.detail.replace("\n", " ")[:60]
        lines.append(
            f"{row.id:>6}  {letter.state:<9} {row.dead_letter.reason[:20]:<20} {status:>4}  "
            f"{entity[:28]:<28} {seen:<20} {row.retry_count}  {detail}"
        )
    lines.append(f"{len(found)} dead letters")
    return "\n".join(lines)


def retry_json(plan: RetryPlan, result: RetryResult | None) -> dict[str, Any]:
    return {
        "dry_run": result is None,
        "would_send" if result is None else "planned": [r.id for r in plan.send],
        "sent": [] if result is None else [r.id for r in result.sent],
        "refused_by_guard": [] if result is None else [r.id for r in result.refused],
        "skipped": [{"id": r.id, "why": why} for r, why in plan.skipped],
    }


def render_retry(plan: RetryPlan, result: RetryResult | None) -> str:
    lines = []
    if result is None:
        lines.append(f"dry run: would retry {len(plan.send)} dead letters")
        lines += [
            f"  {r.id:>6}  {r.dead_letter.reason:<20} {r.event_id}  (redrive {r.retry_count + 1})"
            for r in plan.send
        ]
    else:
        lines.append(
            f"retried {len(result.sent)} dead letters: their events are back on the topic, "
            "the daemon applies them"
        )
        lines += [f"  {r.id:>6}  {r.dead_letter.reason:<20} {r.event_id}" for r in result.sent]
        if result.refused:
            lines.append(f"refused by the redrive guard: {len(result.refused)}")
    if plan.skipped:
        lines.append(f"skipped {len(plan.skipped)}:")
        lines += [f"  {r.id:>6}  {why}" for r, why in plan.skipped]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# replay


def _replay(args: argparse.Namespace) -> int:
    from daemon import redrive  # noqa: PLC0415

    if args.to is not None and args.to < args.from_:
        _error("replay: --to is before --from")
        return EXIT_USAGE
    settings = _settings()
    piece = redrive.Slice(
        start_ms=int(args.from_.timestamp() * 1000),
        end_ms=None if args.to is None else int(args.to.timestamp() * 1000),
        entity=args.entity,
    )

    async def run() -> int:
        bar = ProgressBar("replayed", enabled=not args.json)
        report = await redrive.replay(
            settings, piece, force=args.force, dry_run=args.dry_run, progress=bar
        )
        bar.close()
        if args.json:
            _print_json(report.__dict__)
        else:
            print(render_replay(report))
        return EXIT_OK if report.matched else EXIT_PROBLEMS

    return _run(run())


def render_replay(report: ReplayReport) -> str:
    lines = [
        f"seek              {report.seek}",
        f"records in slice  {report.scanned}",
        f"matching          {report.matched}",
        f"not events        {report.unparseable} (skipped)",
        f"repeated copies   {report.repeated} (skipped)",
        f"already finished  {report.already_finished} (skipped; --force applies them again)",
    ]
    if report.dry_run:
        lines.append(f"would publish     {len(report.planned)}")
    else:
        lines.append(f"checkpoints reset {report.forgotten}")
        lines.append(f"published         {report.published}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# status


def _status(args: argparse.Namespace) -> int:
    from daemon import status  # noqa: PLC0415

    settings = _settings()

    async def run() -> int:
        report = await status.collect(settings, args.metrics_url)
        print(status.to_json(report) if args.json else status.render(report))
        return EXIT_OK

    return _run(run())


# ---------------------------------------------------------------------------------------------
# The parser.


def _add_filters(parser: argparse.ArgumentParser, *, states: bool = True) -> None:
    parser.add_argument("--reason", help="only this reason (e.g. http_400, parent_missing)")
    parser.add_argument("--status", type=int, help="only this HTTP status from Pivotal")
    parser.add_argument("--entity", metavar="EXTERNAL_ID", help="only this entity (any kind)")
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME", help="dead-lettered at or after TIME (or 2h)"
    )
    if states:
        parser.add_argument("--state", choices=STATES, help="only dead letters in this state")


def _add_dead_letters(commands: Any) -> None:
    parser = commands.add_parser(
        "dead-letters", help="list, show, retry or purge dead-lettered events"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="dead letters, newest first")
    _add_filters(listing)
    listing.add_argument("--limit", type=_positive_int, default=100, help="at most N (100)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_dead_letters_list)

    show = actions.add_parser("show", help="one dead letter in full, with the record")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_dead_letters_show)

    from daemon.checkpoints import MAX_REDRIVES  # noqa: PLC0415 - a constant, no connection

    retry = actions.add_parser(
        "retry", help="send dead letters back through the daemon (same limiter, checkpoints)"
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    _add_filters(retry, states=False)
    retry.add_argument("--all", action="store_true", help="every open dead letter")
    retry.add_argument("--dry-run", action="store_true", help="show what would be retried")
    retry.add_argument(
        "--max-redrives",
        type=_positive_int,
        default=MAX_REDRIVES,
        help=f"refuse events redriven this often already ({MAX_REDRIVES})",
    )
    retry.add_argument("--json", action="store_true", help="machine-readable output")
    retry.set_defaults(handler=_dead_letters_retry, state=None)

    purge = actions.add_parser("purge", help="delete dead letters (needs a filter or --all --yes)")
    purge.add_argument("ids", nargs="*", type=int, metavar="ID")
    _add_filters(purge)
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="confirm --all")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted")
    purge.set_defaults(handler=_dead_letters_purge)


def add_commands(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register the operator subcommands on the `pivotal-sync` parser."""
    imp = commands.add_parser(
        "import",
        help="publish a CSV / JSON Lines file of customers as events for the daemon",
        description="Rows become events on the topic; the running daemon applies them. "
        "Safe to run again: finished rows are skipped, nothing is created twice.",
    )
    imp.add_argument("file", nargs="?", type=Path, metavar="FILE", help="customers .csv/.jsonl")
    imp.add_argument("--contacts", type=Path, metavar="FILE", help="contacts, one per row")
    imp.add_argument("--onboardings", type=Path, metavar="FILE", help="onboardings, one per row")
    imp.add_argument("--wait", action="store_true", help="wait for the daemon, then report")
    imp.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS", help="(3600)")
    imp.add_argument("--metrics-url", metavar="URL", help="the daemon's /metrics, for --wait")
    imp.add_argument("--dry-run", action="store_true", help="validate and count; publish nothing")
    imp.add_argument(
        "--max-rate", type=float, metavar="N", help="publish at most N records per second"
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument("--json", action="store_true", help="machine-readable report")
    imp.set_defaults(handler=_import)

    _add_dead_letters(commands)

    replay = commands.add_parser(
        "replay", help="re-deliver a time slice of the topic (finished events stay skipped)"
    )
    replay.add_argument(
        "--from", dest="from_", type=parse_time, required=True, metavar="TIME", help="slice start"
    )
    replay.add_argument("--to", type=parse_time, metavar="TIME", help="slice end (default: now)")
    replay.add_argument("--entity", metavar="EXTERNAL_ID", help="only this customer or entity")
    replay.add_argument("--force", action="store_true", help="apply finished events again too")
    replay.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    replay.add_argument("--json", action="store_true", help="machine-readable report")
    replay.set_defaults(handler=_replay)

    status = commands.add_parser("status", help="lag, quota, checkpoints and dead letters")
    status.add_argument(
        "--metrics-url",
        metavar="URL",
        help="a running daemon's /metrics (default: localhost on PIVOTAL_SYNC_HTTP_PORT)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
