"""`pivotal-sync dead-letters`: list, show, retry (redrive) and purge parked events.

Neither goes around the daemon. Both put records back on the topic the daemon consumes, so a
second attempt is paced by the same limiter, ordered in the same lane, coalesced, checkpointed
and dead-lettered like the first; the tool only decides *what* goes back.

Redrive (`pivotal-sync dead-letters retry`), per dead letter, in the order that keeps the loop
guard atomic and the daemon from skipping the copy:

    1. claim it: `mark_dead_letters_retried` stamps only rows redriven fewer than MAX_REDRIVES
       times, in one UPDATE — two operators retrying at once cannot both send it;
    2. forget its checkpoint row (`forget_events`), or the daemon would skip the copy as done;
    3. produce the original record (key, value, headers) plus `pivotal-sync-redrive: N`, to
       the topic it came from (whose format reads it).

Replay (`pivotal-sync replay`) reads a time slice of the topic with a group-less consumer
(seek by `offsets_for_times`, read up to the high watermark seen at the start), and produces
again the records whose events are not finished; with `force`, it forgets their checkpoints
first so the daemon applies them again (as PATCHes: the entity map has the ids, so no create is
repeated). Events that carry `sequence` stay protected by stale detection either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from daemon.checkpoints import MAX_REDRIVES, CheckpointStore, DeadLetterRow, EventOutcome
from daemon.config import Settings
from daemon.kafka_clients import KafkaClients
from daemon.limits import ACCEPT_SEQUENCE_HEADER, nesting_depth
from daemon.record_reader import UNAVAILABLE_HEADER
from daemon.redaction import redact_any
from daemon.tools.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    TIME_FORMATS,
    ProgressBar,
    error,
    open_store,
    parse_time,
    positive_int,
    print_json,
    run_command,
    settings,
)
from daemon.tools.importing import Outgoing, Progress, produce

REDRIVE_HEADER = "pivotal-sync-redrive"
# Upper bound on the rows one `retry`/`purge --all` looks at (they page through newest first).
MAX_ROWS = 100_000
# `show` prints a record's value as indented JSON up to this depth, as text beyond it.
SHOW_MAX_NESTING_DEPTH = 100
STATES = ("open", "retrying", "resolved")


@dataclass(frozen=True, kw_only=True, slots=True)
class Filters:
    """Which dead letters an operator means (None = any)."""

    reason: str | None = None
    status: int | None = None  # the HTTP status Pivotal answered
    entity: str | None = None  # an external id, of any kind
    since: datetime | None = None  # dead-lettered (last) at or after
    state: str | None = None  # open, retrying or resolved (see `state_of`)
    limit: int = 100

    @property
    def any(self) -> bool:
        fields = (self.reason, self.status, self.entity, self.since, self.state)
        return any(value is not None for value in fields)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadLetterStatus:
    """A dead letter and where it stands now."""

    row: DeadLetterRow
    state: str


def state_of(outcome: EventOutcome | None) -> str:
    """open: the event's last outcome is the dead letter; retrying: redriven and not finished
    yet (its checkpoint was forgotten); resolved: a redrive or a later copy succeeded."""
    if outcome is None:
        return "retrying"
    return "open" if outcome.outcome == "dead_lettered" else "resolved"


async def letters(
    store: CheckpointStore, filters: Filters, ids: Sequence[int] = ()
) -> list[DeadLetterStatus]:
    """The dead letters named by `ids`, or else matching `filters`, newest first."""
    if ids:
        found = [await store.dead_letter(i) for i in ids]
        rows = [row for row in found if row is not None]
    else:
        # The state filter is applied here, after the query: fetch generously.
        limit = MAX_ROWS if filters.state else filters.limit
        rows = await store.dead_letters(
            reason=filters.reason,
            status=filters.status,
            entity=filters.entity,
            since=filters.since,
            limit=limit,
        )
    outcomes = await store.outcomes([row.event_id for row in rows])
    result = [DeadLetterStatus(row=row, state=state_of(outcomes.get(row.event_id))) for row in rows]
    if filters.state is not None:
        result = [letter for letter in result if letter.state == filters.state]
    return result if ids else result[: filters.limit]


# ---------------------------------------------------------------------------------------------
# Retry.


@dataclass
class RetryPlan:
    send: list[DeadLetterRow] = field(default_factory=list)
    skipped: list[tuple[DeadLetterRow, str]] = field(default_factory=list)


def plan_retry(
    candidates: Sequence[DeadLetterStatus], max_redrives: int = MAX_REDRIVES
) -> RetryPlan:
    """Which dead letters may go back, and why the others may not. No I/O."""
    plan = RetryPlan()
    for letter in candidates:
        row = letter.row
        if letter.state == "resolved":
            plan.skipped.append((row, "already succeeded"))
        elif letter.state == "retrying":
            plan.skipped.append((row, "a redrive is still in flight"))
        elif row.event_id.startswith("record:"):
            # Never parsed: the same bytes would fail the same way, under a new id each time.
            plan.skipped.append((row, "not a valid event; fix the producer and publish it again"))
        elif any(name == UNAVAILABLE_HEADER for name, _ in row.record.headers):
            # Deleted by retention before it could be read back: an empty value would go out
            # as a tombstone. The event's state is the producer's to send again.
            plan.skipped.append((row, "its record was gone from Kafka; publish the event again"))
        elif row.retry_count >= max_redrives:
            plan.skipped.append((row, f"redriven {row.retry_count} times already (the limit)"))
        else:
            plan.send.append(row)
    # Original order: one entity's dead letters must reach its lane in the order they arrived.
    plan.send.sort(key=lambda r: (r.record.partition, r.record.offset, r.id))
    return plan


def redrive_record(row: DeadLetterRow, attempt: int, *, accept_sequence: bool = False) -> Outgoing:
    """The original record again, marked as redrive number `attempt` (and, on the operator's
    word, as exempt from the sequence bound of daemon/limits.py)."""
    ours = (REDRIVE_HEADER, ACCEPT_SEQUENCE_HEADER)
    headers = [h for h in row.record.headers if h[0] not in ours]
    headers.append((REDRIVE_HEADER, str(attempt).encode()))
    if accept_sequence:
        headers.append((ACCEPT_SEQUENCE_HEADER, b"1"))
    return Outgoing(key=row.record.key, value=row.record.value, headers=tuple(headers))


@dataclass
class RetryResult:
    sent: list[DeadLetterRow] = field(default_factory=list)
    # Claimed by someone else or at the limit by the time we tried (the guard said no).
    refused: list[DeadLetterRow] = field(default_factory=list)


async def retry(
    settings: Settings,
    store: CheckpointStore,
    plan: RetryPlan,
    *,
    max_redrives: int = MAX_REDRIVES,
    progress: Progress | None = None,
    accept_sequence: bool = False,
) -> RetryResult:
    """Claim, forget, produce (see the module docstring for why in this order)."""
    result = RetryResult()
    if not plan.send:
        return result
    claimed = set(
        await store.mark_dead_letters_retried(
            [row.id for row in plan.send], max_redrives=max_redrives
        )
    )
    result.sent = [row for row in plan.send if row.id in claimed]
    result.refused = [row for row in plan.send if row.id not in claimed]
    if result.sent:
        await store.forget_events([row.event_id for row in result.sent])
        # Each record goes back to the topic it came from: that topic's format reads it.
        kafka = KafkaClients(settings)
        by_topic: dict[str, list[Outgoing]] = {}
        for row in result.sent:
            by_topic.setdefault(row.record.topic, []).append(
                redrive_record(row, row.retry_count + 1, accept_sequence=accept_sequence)
            )
        for topic, records in by_topic.items():
            await produce(kafka, topic, records, progress)
    return result


async def purge(
    store: CheckpointStore, filters: Filters, ids: Sequence[int] = (), *, everything: bool = False
) -> int:
    """Delete dead letters by ids and/or filters, or all of them; return how many."""
    if filters.state is not None or everything:
        # The store filters by columns only; states (and "all") are resolved to ids here.
        wide = dataclasses.replace(filters, limit=MAX_ROWS)
        chosen = await letters(store, wide, ids)
        if not chosen:
            return 0
        return await store.delete_dead_letters([letter.row.id for letter in chosen])
    if not ids and not filters.any:
        raise ValueError("purge needs ids or a filter (or everything=True)")
    return await store.delete_dead_letters(
        list(ids) or None,
        reason=filters.reason,
        status=filters.status,
        entity=filters.entity,
        since=filters.since,
    )


# ---------------------------------------------------------------------------------------------
# The command: arguments, run, render.


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        reason=args.reason,
        status=args.status,
        entity=args.entity,
        since=args.since,
        state=getattr(args, "state", None),
        limit=getattr(args, "limit", 100),
    )


def run_list(args: argparse.Namespace) -> int:
    config = settings()

    async def run() -> int:
        async with await open_store(config) as store:
            found = await letters(store, _filters(args))
        if args.json:
            print_json([letter_json(letter, full=False) for letter in found])
        else:
            print(render_letters(found))
        return EXIT_OK

    return run_command(run(), migrate=config)


def run_show(args: argparse.Namespace) -> int:
    config = settings()

    async def run() -> int:
        async with await open_store(config) as store:
            found = await letters(store, Filters(), [args.id])
        if not found:
            error(f"no dead letter {args.id}")
            return EXIT_PROBLEMS
        letter = letter_json(found[0], full=True)
        if args.json:
            print_json(letter)
        else:
            for name, value in letter.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                print(f"{name:<16} {text}")
        return EXIT_OK

    return run_command(run(), migrate=config)


def run_retry(args: argparse.Namespace) -> int:

    filters = _filters(args)
    if not args.ids and not filters.any and not args.all:
        error("dead-letters retry: name IDs, give a filter (--reason, --since, …) or --all")
        return EXIT_USAGE
    config = settings()
    if not args.ids:
        filters = dataclasses.replace(filters, limit=MAX_ROWS)

    async def run() -> int:
        async with await open_store(config) as store:
            found = await letters(store, filters, args.ids)
            plan = plan_retry(found, args.max_redrives)
            if args.dry_run:
                result = None
            else:
                bar = ProgressBar("redriven", enabled=not args.json)
                result = await retry(
                    config,
                    store,
                    plan,
                    max_redrives=args.max_redrives,
                    progress=bar,
                    accept_sequence=args.accept_sequence,
                )
                bar.close()
        if args.json:
            print_json(retry_json(plan, result))
        else:
            print(render_retry(plan, result))
        return EXIT_OK if plan.send and (result is None or result.sent) else EXIT_PROBLEMS

    return run_command(run(), migrate=config)


def run_purge(args: argparse.Namespace) -> int:

    filters = _filters(args)
    if args.all and not args.yes:
        error("dead-letters purge --all deletes every dead letter: add --yes to confirm")
        return EXIT_USAGE
    if not args.all and not args.ids and not filters.any:
        error("dead-letters purge: name IDs, give a filter (--reason, --state, …) or --all --yes")
        return EXIT_USAGE
    config = settings()

    async def run() -> int:
        async with await open_store(config) as store:
            if args.dry_run:
                wide = dataclasses.replace(filters, limit=MAX_ROWS)
                found = await letters(store, wide, args.ids)
                print(f"would delete {len(found)} dead letters")
                return EXIT_OK
            deleted = await purge(store, filters, args.ids, everything=args.all)
        print(f"deleted {deleted} dead letters")
        return EXIT_OK

    return run_command(run(), migrate=config)


def letter_json(letter: DeadLetterStatus, *, full: bool) -> dict[str, Any]:
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
    # Rows stored before redaction existed may still hold a secret: never print one.
    redacted: dict[str, Any] = redact_any(data)
    return redacted


def _value(value: bytes | None) -> Any:
    """The record's value as JSON when it can be shown as JSON, as text otherwise."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text
    # The indenting encoder recurses: a record nested hundreds of levels deep (the kind that is
    # dead-lettered as too_deep) would crash `show` with a RecursionError. Show it as text.
    return parsed if nesting_depth(parsed) <= SHOW_MAX_NESTING_DEPTH else text


def render_letters(found: list[DeadLetterStatus]) -> str:
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


def _add_filters(parser: argparse.ArgumentParser, *, states: bool = True) -> None:
    parser.add_argument("--reason", help="only this reason (e.g. http_400, parent_missing)")
    parser.add_argument("--status", type=int, help="only this HTTP status from Pivotal")
    parser.add_argument("--entity", metavar="EXTERNAL_ID", help="only this entity (any kind)")
    parser.add_argument(
        "--since", type=parse_time, metavar="TIME", help="dead-lettered at or after TIME (or 2h)"
    )
    if states:
        parser.add_argument("--state", choices=STATES, help="only dead letters in this state")


def add_parser(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register `dead-letters` and its actions."""
    parser = commands.add_parser(
        "dead-letters",
        help="list, show, retry or purge dead-lettered events",
        description=textwrap.fill(
            "Events the daemon could not apply, kept in Postgres with the record and Pivotal's "
            "answer. `retry` sends them back through the daemon (same rate limit, same "
            "checkpoints); `purge` deletes them. --since takes a TIME: " + TIME_FORMATS
        ),
        epilog="examples:\n"
        "  pivotal-sync dead-letters list --reason http_400 --since 2h\n"
        "  pivotal-sync dead-letters show 42\n"
        "  pivotal-sync dead-letters retry --reason parent_missing --dry-run\n"
        "  pivotal-sync dead-letters purge --state resolved",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="dead letters, newest first")
    _add_filters(listing)
    listing.add_argument("--limit", type=positive_int, default=100, help="at most N (100)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one dead letter in full, with the record")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_show)

    retry = actions.add_parser(
        "retry", help="send dead letters back through the daemon (same limiter, checkpoints)"
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID")
    _add_filters(retry, states=False)
    retry.add_argument("--all", action="store_true", help="every open dead letter")
    retry.add_argument("--dry-run", action="store_true", help="show what would be retried")
    retry.add_argument(
        "--max-redrives",
        type=positive_int,
        default=MAX_REDRIVES,
        help=f"refuse events redriven this often already ({MAX_REDRIVES})",
    )
    retry.add_argument(
        "--accept-sequence",
        action="store_true",
        help="apply a sequence_implausible event anyway (the producer really jumped ahead)",
    )
    retry.add_argument("--json", action="store_true", help="machine-readable output")
    retry.set_defaults(handler=run_retry, state=None)

    purge = actions.add_parser("purge", help="delete dead letters (needs a filter or --all --yes)")
    purge.add_argument("ids", nargs="*", type=int, metavar="ID")
    _add_filters(purge)
    purge.add_argument("--all", action="store_true", help="every dead letter")
    purge.add_argument("--yes", action="store_true", help="confirm --all")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted")
    purge.set_defaults(handler=run_purge)
