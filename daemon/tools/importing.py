"""`pivotal-sync import`: a CSV or JSON Lines file of customers becomes events on the topic.

The import never talks to Pivotal. It turns each row into events of the contract in
docs/events.md and publishes them to the topic the daemon consumes, so the rows get every
guarantee the stream gets (per-customer order, coalescing, parent gating, checkpoints, the
rate limiter).

    read_changes(files) -> Plan      rows → validated Changes, bad rows → Rejections; no I/O
                                     except reading the files
    build_record(change) -> Outgoing the Kafka record of one change
    run_import(...) -> ImportReport  skip what the daemon finished, publish, optionally wait

Why it is safe to run twice, or to kill and run again: an event id is a hash of the change
itself (`import:` + sha256 of kind, external id, customer and fields), so the same row always
yields the same id and the daemon skips ids it has finished; a changed row yields a new id and
is applied as an update. Rows are validated with the daemon's own rules (`daemon.events`), so a
row Pivotal would certainly reject never reaches the topic; a bad row is reported with its line
number and the good ones go on.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import itertools
import json
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.checkpoints import CheckpointStore, EventOutcome
from daemon.config import Settings
from daemon.errors import ConfigError
from daemon.events import (
    FIELD_RULES,
    EntityKind,
    RecordRef,
    field_problems,
    identifier_problem,
    parse_record,
)
from daemon.tools.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    ProgressBar,
    error,
    open_store,
    print_json,
    run_command,
    settings,
)
from daemon.tools.status import daemon_requests

if TYPE_CHECKING:
    from daemon.kafka_clients import KafkaClients

EVENT_SOURCE = "pivotal-sync/import"
ID_PREFIX = "import:"
# Header naming the file an event came from, so a dead letter can be traced back to it.
IMPORT_HEADER = "pivotal-sync-import"
PRODUCE_BATCH = 1000
WAIT_POLL_SECONDS = 1.0

Progress = Callable[[int, int], None]

# Cell → JSON value for the fields that are not strings (a CSV cell is always text).
INTEGER_FIELDS = frozenset({"mrr", "monthly_orders"})
BOOLEAN_FIELDS = frozenset({"is_primary", "waiting_on_customer"})
OBJECT_FIELDS = frozenset({"metadata"})
LIST_FIELDS = frozenset({"labels"})  # "a;b" or a JSON array
_TRUE = frozenset({"true", "yes", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "0", "n", "f"})
# Pivotal requires these on create (docs/pivotal-api.md §5.4, §5.5 and the sandbox).
REQUIRED_FIELDS: Mapping[EntityKind, tuple[str, ...]] = {
    EntityKind.CUSTOMER: ("name",),
    EntityKind.CONTACT: ("name",),
    EntityKind.ONBOARDING: (),
}
CHILD_PREFIXES: Mapping[EntityKind, str] = {
    EntityKind.CONTACT: "contact_",
    EntityKind.ONBOARDING: "onboarding_",
}


class ImportFileError(Exception):
    """A file cannot be imported at all (missing, unreadable, no header, unknown format)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One entity to upsert, from one row."""

    kind: EntityKind
    external_id: str
    # The customer it belongs to (its own id for a customer): the record key, the lane.
    customer_external_id: str
    fields: Mapping[str, Any]
    # Where it came from, for reports.
    source: str
    line: int

    @property
    def event_id(self) -> str:
        return event_id(self.kind, self.external_id, self.customer_external_id, self.fields)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rejection:
    """A bad row: where, and every reason."""

    source: str
    line: int
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {'; '.join(self.reasons)}"


@dataclass
class Plan:
    """What a set of import files amounts to, in publishing order."""

    changes: list[Change] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    rows_read: int = 0
    # Columns no rule knows: ignored, and worth telling the operator (a typo?).
    ignored_columns: set[str] = field(default_factory=set)

    def by_kind(self) -> dict[str, int]:
        counts = {kind.value: 0 for kind in EntityKind}
        for change in self.changes:
            counts[change.kind.value] += 1
        return counts


def event_id(
    kind: EntityKind, external_id: str, customer_external_id: str, fields: Mapping[str, Any]
) -> str:
    """The deterministic CloudEvent id of a change: same content → same id, on every run."""
    canonical = json.dumps(
        [kind.value, external_id, customer_external_id, fields],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return ID_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading rows.

Row = dict[str, Any]


# `import -`: rows from standard input (`kubectl exec -i … -- pivotal-sync import - < file`), so
# a pod with a read-only file system needs no place for the file.
STDIN = Path("-")


def read_rows(path: Path) -> Iterator[tuple[int, Row | str]]:
    """(line number, row) per data row; a row that cannot be read at all is its problem text."""
    if path == STDIN:
        return _stdin_rows()
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return _jsonl_rows(path)
    if suffix in {".csv", ".txt", ""}:
        return _csv_rows(path)
    raise ImportFileError(f"{path}: unknown format {suffix!r} (use .csv or .jsonl)")


def _stdin_rows() -> Iterator[tuple[int, Row | str]]:
    """Standard input has no file name: a first line opening a JSON object means JSON Lines."""
    handle = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    first = handle.readline()
    lines = itertools.chain([first], handle)
    if first.lstrip().startswith("{"):
        return _jsonl_lines(lines)
    return _csv_lines(lines, "standard input")


def _csv_rows(path: Path) -> Iterator[tuple[int, Row | str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        yield from _csv_lines(handle, str(path))


def _csv_lines(lines: Iterable[str], source: str) -> Iterator[tuple[int, Row | str]]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header:
        raise ImportFileError(f"{source}: empty file, expected a header row")
    names = [name.strip() for name in header]
    start = reader.line_num + 1
    for cells in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(names):
            yield line, f"expected {len(names)} columns, got {len(cells)}"
            continue
        yield line, {n: c.strip() for n, c in zip(names, cells, strict=True) if c.strip()}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row | str]]:
    with path.open(encoding="utf-8-sig") as handle:
        yield from _jsonl_lines(handle)


def _jsonl_lines(lines: Iterable[str]) -> Iterator[tuple[int, Row | str]]:
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            yield line, f"not valid JSON: {str(exc)[:80]}"
            continue
        if not isinstance(value, dict):
            yield line, "expected a JSON object"
            continue
        yield line, value


# ---------------------------------------------------------------------------------------------
# Rows → changes.


def _integer(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text  # left as text: validation names the field


def _boolean(text: str) -> Any:
    lowered = text.lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else text


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _string_list(text: str) -> Any:
    if text.startswith("["):
        return _json_value(text)
    return [item.strip() for item in text.split(";") if item.strip()]


_CONVERTERS: Mapping[str, Callable[[str], Any]] = {
    **dict.fromkeys(INTEGER_FIELDS, _integer),
    **dict.fromkeys(BOOLEAN_FIELDS, _boolean),
    **dict.fromkeys(OBJECT_FIELDS, _json_value),
    **dict.fromkeys(LIST_FIELDS, _string_list),
}


def _cell(name: str, value: Any) -> Any:
    """A cell's JSON value: CSV text converted for the non-string fields; JSON kept as is."""
    convert = _CONVERTERS.get(name)
    if convert is None or not isinstance(value, str):
        return value
    return convert(value)


def _identifier_problem(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return f"{name} is missing"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return f"{name} must be a string"
    problem = identifier_problem(value)
    return f"{name} {problem}" if problem else None


def _entity(
    kind: EntityKind, values: Mapping[str, Any], ignored: set[str], prefix: str
) -> tuple[Row, list[str]]:
    """The fields of one entity from its columns (already stripped of their prefix)."""
    rules = FIELD_RULES[kind]
    fields: Row = {}
    for name, value in values.items():
        if name in rules:
            fields[name] = _cell(name, value)
        else:
            ignored.add(prefix + name)
    label = "" if kind is EntityKind.CUSTOMER else f"{kind.value} "
    problems = [
        f"{label}{name} is required" for name in REQUIRED_FIELDS[kind] if name not in fields
    ]
    problems += [f"{label}{p.removeprefix('data.')}" for p in field_problems(kind, fields)]
    return fields, problems


def _split_columns(row: Row) -> tuple[Row, dict[EntityKind, Row], list[Row], list[Row]]:
    """Customer columns, prefixed child columns by kind, and nested child lists (JSON Lines)."""
    customer: Row = {}
    children: dict[EntityKind, Row] = {kind: {} for kind in CHILD_PREFIXES}
    for name, value in row.items():
        if name in ("contacts", "onboardings", "onboarding"):
            continue
        for kind, prefix in CHILD_PREFIXES.items():
            if name.startswith(prefix):
                children[kind][name.removeprefix(prefix)] = value
                break
        else:
            customer[name] = value
    contacts = row.get("contacts") or []
    onboardings = row.get("onboardings") or ([row["onboarding"]] if row.get("onboarding") else [])
    return customer, children, contacts, onboardings


class _Planner:
    """Accumulates changes across files, enforcing one version of each entity and slug."""

    def __init__(self) -> None:
        self.plan = Plan()
        # (kind, external id) → (line description, fields) of the first change seen.
        self._seen: dict[tuple[EntityKind, str], tuple[str, Change]] = {}
        self._slugs: dict[str, tuple[str, str]] = {}  # slug → (external id, where)
        self._rejected_customers: dict[str, str] = {}  # external id → where
        self._order: dict[str, list[Change]] = {}  # customer → its changes, in order

    def child_change(
        self,
        kind: EntityKind,
        values: Row,
        customer: Any,
        where: tuple[str, int],
        problems: list[str],
    ) -> Change | None:
        prefix = CHILD_PREFIXES[kind]
        external_id = values.pop("external_id", None)
        problem = _identifier_problem(f"{prefix}external_id", external_id)
        if problem:
            problems.append(problem)
        fields, field_issues = _entity(kind, values, self.plan.ignored_columns, prefix)
        problems += field_issues
        if problem or field_issues:
            return None
        return Change(
            kind=kind,
            external_id=str(external_id),
            customer_external_id=str(customer),
            fields=fields,
            source=where[0],
            line=where[1],
        )

    def customer_row(self, source: str, line: int, row: Row) -> None:
        columns, prefixed, contacts, onboardings = _split_columns(row)
        problems: list[str] = []
        external_id = columns.pop("external_id", None)
        problem = _identifier_problem("external_id", external_id)
        if problem:
            problems.append(problem)
        customer_id = str(external_id)
        fields, issues = _entity(EntityKind.CUSTOMER, columns, self.plan.ignored_columns, "")
        problems += issues
        changes: list[Change] = []
        if not problems:
            changes.append(
                Change(
                    kind=EntityKind.CUSTOMER,
                    external_id=customer_id,
                    customer_external_id=customer_id,
                    fields=fields,
                    source=source,
                    line=line,
                )
            )
        nested = [(EntityKind.CONTACT, c) for c in contacts]
        nested += [(EntityKind.ONBOARDING, o) for o in onboardings]
        for kind, values in prefixed.items():
            if values:
                nested.append((kind, values))
        for kind, values in nested:
            if not isinstance(values, dict):
                problems.append(f"{kind.value} must be an object")
                continue
            change = self.child_change(kind, dict(values), customer_id, (source, line), problems)
            if change is not None:
                changes.append(change)
        self._accept(source, line, changes, problems, customer=customer_id)

    def child_row(self, kind: EntityKind, source: str, line: int, row: Row) -> None:
        values = {name.removeprefix(CHILD_PREFIXES[kind]): v for name, v in row.items()}
        customer = values.pop("customer_external_id", None) or values.pop("customer", None)
        problems: list[str] = []
        problem = _identifier_problem("customer_external_id", customer)
        if problem:
            problems.append(problem)
        elif str(customer) in self._rejected_customers:
            where = self._rejected_customers[str(customer)]
            problems.append(f"its customer {customer} was rejected ({where})")
        change = self.child_change(kind, values, customer, (source, line), problems)
        changes = [change] if change is not None and not problems else []
        self._accept(source, line, changes, problems, customer=None)

    def _accept(
        self,
        source: str,
        line: int,
        changes: list[Change],
        problems: list[str],
        *,
        customer: str | None,
    ) -> None:
        problems += self._conflicts(changes)
        if problems:
            self.plan.rejected.append(Rejection(source=source, line=line, reasons=tuple(problems)))
            if customer is not None and not _identifier_problem("", customer):
                self._rejected_customers.setdefault(customer, f"{source}:{line}")
            return
        for change in changes:
            key = (change.kind, change.external_id)
            if key in self._seen:
                continue  # the very same change again (checked by _conflicts): once is enough
            self._seen[key] = (f"{source}:{line}", change)
            slug = change.fields.get("slug") if change.kind is EntityKind.CUSTOMER else None
            if isinstance(slug, str):
                self._slugs[slug] = (change.external_id, f"{source}:{line}")
            self._order.setdefault(change.customer_external_id, []).append(change)

    def _conflicts(self, changes: list[Change]) -> list[str]:
        problems = []
        for change in changes:
            earlier = self._seen.get((change.kind, change.external_id))
            if earlier is not None and earlier[1].event_id != change.event_id:
                problems.append(
                    f"{change.kind.value} {change.external_id} already appears with different "
                    f"values at {earlier[0]}"
                )
            slug = change.fields.get("slug") if change.kind is EntityKind.CUSTOMER else None
            owner = self._slugs.get(slug) if isinstance(slug, str) else None
            if owner is not None and owner[0] != change.external_id:
                # Pivotal would answer 409 slug_taken, and the daemon would adopt the other
                # customer's record: two CRM customers merged into one.
                problems.append(f"slug {slug!r} is already used by {owner[0]} at {owner[1]}")
        return problems

    def finish(self) -> Plan:
        # Customer by customer, the customer before its children: one key, one partition, so
        # the daemon sees them in this order and its parent gate holds the children.
        for changes in self._order.values():
            changes.sort(key=lambda c: c.kind is not EntityKind.CUSTOMER)
            self.plan.changes.extend(changes)
        return self.plan


def read_changes(
    customers: Path | None,
    *,
    contacts: Path | None = None,
    onboardings: Path | None = None,
) -> Plan:
    """Read and validate every file; the good rows become changes, the bad ones rejections."""
    planner = _Planner()
    files: list[tuple[Path, EntityKind]] = []
    if customers is not None:
        files.append((customers, EntityKind.CUSTOMER))
    if contacts is not None:
        files.append((contacts, EntityKind.CONTACT))
    if onboardings is not None:
        files.append((onboardings, EntityKind.ONBOARDING))
    for path, kind in files:
        source = "stdin" if path == STDIN else path.name
        for line, row in read_rows(path):
            planner.plan.rows_read += 1
            if isinstance(row, str):
                planner.plan.rejected.append(Rejection(source=source, line=line, reasons=(row,)))
            elif kind is EntityKind.CUSTOMER:
                planner.customer_row(source, line, row)
            else:
                planner.child_row(kind, source, line, row)
    return planner.finish()


# ---------------------------------------------------------------------------------------------
# Changes → Kafka records.


@dataclass(frozen=True, kw_only=True, slots=True)
class Outgoing:
    """One record to produce."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def cloud_event(change: Change, now: datetime | None = None) -> dict[str, Any]:
    data: Row = dict(change.fields)
    if change.kind is not EntityKind.CUSTOMER:
        data["customer"] = change.customer_external_id
    moment = now or datetime.now(UTC)
    return {
        "specversion": "1.0",
        "id": change.event_id,
        "source": EVENT_SOURCE,
        # created and updated both mean upsert; the id, not the type, makes a re-run harmless.
        "type": f"{change.kind.value}.created",
        "subject": change.external_id,
        "time": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "data": data,
    }


def build_record(change: Change, now: datetime | None = None) -> Outgoing:
    """The Kafka record of a change; checked with the daemon's own parser before it leaves."""
    key = change.customer_external_id.encode("utf-8")
    value = json.dumps(cloud_event(change, now), ensure_ascii=False).encode("utf-8")
    # The row was validated already; this catches any drift between the two rule sets.
    parse_record(RecordRef(topic="import", partition=0, offset=0, key=key, value=value))
    return Outgoing(key=key, value=value, headers=((IMPORT_HEADER, change.source.encode()),))


@dataclass(frozen=True, slots=True)
class Produced:
    count: int
    end_offsets: dict[int, int]  # partition → last offset written + 1


async def produce(
    kafka: KafkaClients,
    topic: str,
    records: Sequence[Outgoing],
    progress: Progress | None = None,
    *,
    max_rate: float | None = None,
) -> Produced:
    """Produce in order with one producer (acks=all): per-key order is what the CRM
    guarantees, and what the daemon relies on.

    `max_rate` (records per second) spreads a big import out, for a topic other consumers
    share; the daemon paces Pivotal by itself either way."""
    producer = kafka.producer(acks="all", linger_ms=5)
    await producer.start()
    done, ends = 0, dict[int, int]()
    try:
        pending: list[asyncio.Future[Any]] = []
        started = time.monotonic()
        for index, record in enumerate(records):
            if max_rate:
                await asyncio.sleep(max(0.0, started + index / max_rate - time.monotonic()))
            pending.append(
                await producer.send(
                    topic, key=record.key, value=record.value, headers=list(record.headers)
                )
            )
            if len(pending) >= PRODUCE_BATCH:
                done += await _settle(pending, done, len(records), progress, ends)
        done += await _settle(pending, done, len(records), progress, ends)
    finally:
        await producer.stop()
    return Produced(count=done, end_offsets=ends)


async def _settle(
    pending: list[asyncio.Future[Any]],
    done: int,
    total: int,
    progress: Progress | None,
    ends: dict[int, int],
) -> int:
    for meta in await asyncio.gather(*pending):
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    count = len(pending)
    pending.clear()
    if progress is not None:
        progress(done + count, total)
    return count


# ---------------------------------------------------------------------------------------------
# The import, end to end.


@dataclass
class ImportReport:
    """The numbers an operator checks after an import (the seed guide's "Reporting")."""

    rows_read: int
    rejected: list[Rejection]
    changes: dict[str, int]
    ignored_columns: list[str]
    already_finished: int = 0
    published: int = 0
    # Filled by --wait, from the daemon's checkpoint and dead-letter store.
    waited: bool = False
    caught_up: bool = False
    succeeded: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    requests: int = 0
    # pivotal_sync_api_requests_total of the daemon, growth during this run (--metrics-url).
    daemon_requests: float | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["rejected"] = [
            {"file": r.source, "line": r.line, "reasons": list(r.reasons)} for r in self.rejected
        ]
        return data


def outcome_counts(
    outcomes: Mapping[str, EventOutcome], changes: Sequence[Change]
) -> tuple[dict[str, int], dict[str, int], dict[str, int], int, int]:
    """succeeded by kind, dead letters by reason, outcomes, pending, requests spent."""
    succeeded = {kind.value: 0 for kind in EntityKind}
    dead: dict[str, int] = {}
    by_outcome: dict[str, int] = {}
    pending = requests = 0
    for change in changes:
        found = outcomes.get(change.event_id)
        if found is None:
            pending += 1
            continue
        by_outcome[found.outcome] = by_outcome.get(found.outcome, 0) + 1
        if found.outcome == "dead_lettered":
            reason = found.reason or "unknown"
            dead[reason] = dead.get(reason, 0) + 1
            requests += found.attempts
        else:
            succeeded[change.kind.value] += 1
            # A request is recorded against the event that sent it; coalesced, duplicate and
            # skipped events cost none.
            requests += found.outcome == "sent"
    return succeeded, dead, by_outcome, pending, requests


async def wait_for_daemon(
    store: CheckpointStore,
    ids: Sequence[str],
    timeout_seconds: float,
    progress: Progress | None = None,
) -> dict[str, EventOutcome]:
    """Poll the checkpoint table until every id is finished or the timeout passes."""
    deadline = time.monotonic() + timeout_seconds
    wanted = len(set(ids))
    while True:
        found = await store.outcomes(ids)
        if progress is not None:
            progress(len(found), wanted)
        if len(found) >= wanted or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(WAIT_POLL_SECONDS)


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportOptions:
    wait: bool = False
    wait_timeout_seconds: float = 3600.0
    metrics_url: str | None = None
    dry_run: bool = False
    max_rate: float | None = None  # records per second, None = as fast as the broker takes


async def run_import(
    settings: Settings,
    plan: Plan,
    options: ImportOptions,
    *,
    on_publish: Progress | None = None,
    on_wait: Progress | None = None,
) -> ImportReport:
    """Publish what the daemon has not finished yet; with `wait`, report what became of it."""
    started = time.monotonic()
    report = ImportReport(
        rows_read=plan.rows_read,
        rejected=plan.rejected,
        changes=plan.by_kind(),
        ignored_columns=sorted(plan.ignored_columns),
    )
    records = {change.event_id: build_record(change) for change in plan.changes}
    ids = list(records)
    async with await open_store(settings) as store:
        finished = await store.finished_ids(ids)
        report.already_finished = len(finished)
        todo = [records[i] for i in ids if i not in finished]
        before = await daemon_requests(options.metrics_url)
        if not options.dry_run and todo:
            from daemon.kafka_clients import KafkaClients  # noqa: PLC0415 - loads aiokafka

            produced = await produce(
                KafkaClients(settings),
                settings.kafka_topic,
                todo,
                on_publish,
                max_rate=options.max_rate,
            )
            report.published = produced.count
        if options.wait and not options.dry_run:
            found = await wait_for_daemon(store, ids, options.wait_timeout_seconds, on_wait)
            report.waited = True
            counts = outcome_counts(found, plan.changes)
            report.succeeded, report.dead_lettered, report.outcomes = counts[:3]
            report.pending, report.requests = counts[3:]
            report.caught_up = report.pending == 0
            after = await daemon_requests(options.metrics_url)
            if before is not None and after is not None:
                report.daemon_requests = after - before
    report.seconds = round(time.monotonic() - started, 1)
    return report


# ---------------------------------------------------------------------------------------------
# The command: arguments, run, render.


def check_import_topic(config: Settings) -> None:
    """The import publishes built-in CloudEvents to PIVOTAL_SYNC_KAFKA_TOPIC: that topic must
    be one the daemon consumes, with the built-in contract, or the rows would be lost or
    misread. ConfigError (exit 2) otherwise."""
    from daemon.formats.mapping import mapping_for  # noqa: PLC0415

    topic, variable = config.kafka_topic, "PIVOTAL_SYNC_KAFKA_TOPIC"
    if topic not in config.topics:
        raise ConfigError(variable, f"{topic!r} is not in PIVOTAL_SYNC_KAFKA_TOPICS")
    if topic in mapping_for(config.topics, config.mapping_file).topics:
        raise ConfigError(variable, f"{topic!r} has its own mapping; the import writes CloudEvents")


def run(args: argparse.Namespace) -> int:
    if args.file is None and args.contacts is None and args.onboardings is None:
        error("import: give a customers FILE, --contacts FILE or --onboardings FILE")
        return EXIT_USAGE
    if [args.file, args.contacts, args.onboardings].count(STDIN) > 1:
        error("import: only one of the files can be - (standard input)")
        return EXIT_USAGE
    config = settings()
    check_import_topic(config)
    try:
        plan = read_changes(args.file, contacts=args.contacts, onboardings=args.onboardings)
    except (ImportFileError, OSError, UnicodeDecodeError) as exc:
        error(f"import: {exc}")
        return EXIT_USAGE
    options = ImportOptions(
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
        report = await run_import(config, plan, options, on_publish=publishing, on_wait=waiting)
        publishing.close()
        waiting.close()
        if args.json:
            print_json(report.as_json())
        else:
            print(render(report, dry_run=args.dry_run))
        problems = report.rejected or report.dead_lettered or report.pending
        return EXIT_PROBLEMS if problems else EXIT_OK

    return run_command(run(), migrate=config)


def _kinds(counts: dict[str, int]) -> str:
    return " · ".join(
        f"{counts.get(kind, 0)} {kind}s" for kind in ("customer", "contact", "onboarding")
    )


def render(report: ImportReport, *, dry_run: bool = False, max_rejected: int = 50) -> str:
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


def add_parser(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register `import`."""
    imp = commands.add_parser(
        "import",
        help="publish a CSV / JSON Lines file of customers as events for the daemon",
        description=textwrap.fill(
            "Rows become events on the topic; the running daemon applies them. "
            "Safe to run again: finished rows are skipped, nothing is created twice. FILE `-` "
            "reads standard input (CSV, or JSON Lines when the first line is a JSON object), so "
            "a read-only pod needs no copy of the file. Creates the daemon's tables on a fresh "
            "database, as `run` does."
        ),
        epilog="examples:\n"
        "  pivotal-sync import customers.csv --wait\n"
        "  pivotal-sync import customers.jsonl --contacts contacts.csv --dry-run\n"
        "  kubectl exec -i deploy/pivotal-sync -- pivotal-sync import - < customers.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument(
        "file", nargs="?", type=Path, metavar="FILE", help="customers .csv/.jsonl, or - for stdin"
    )
    imp.add_argument("--contacts", type=Path, metavar="FILE", help="contacts, one per row (or -)")
    imp.add_argument(
        "--onboardings", type=Path, metavar="FILE", help="onboardings, one per row (or -)"
    )
    imp.add_argument("--wait", action="store_true", help="wait for the daemon, then report")
    imp.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS", help="(3600)")
    imp.add_argument("--metrics-url", metavar="URL", help="the daemon's /metrics, for --wait")
    imp.add_argument("--dry-run", action="store_true", help="validate and count; publish nothing")
    imp.add_argument(
        "--max-rate", type=float, metavar="N", help="publish at most N records per second"
    )
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument("--json", action="store_true", help="machine-readable report")
    imp.set_defaults(handler=run)
