"""`pivotal-sync mapping check FILE` and `pivotal-sync mapping preview FILE < record.json`.

`check` loads the mapping file exactly as `run` does at start-up and prints every problem as
FILE:LINE: field: what. `preview` decodes one record (its value on standard input; `null` is a
tombstone; `--header` for binary-mode CloudEvents) with the file's rules and prints the
internal event and the exact requests the daemon would send for it — method, path, body,
Idempotency-Key — once as if the entity were new to Pivotal and once as if Pivotal already had
it (the entity map decides that at run time). The requests come from the daemon's own
dispatcher with the dry-run client in place of Pivotal: nothing is sent, nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import logs
from daemon.errors import ConfigError, InvalidEventError, MappingFileError
from daemon.events import EntityKey, EntityKind, Event, RecordRef
from daemon.formats import Skip
from daemon.formats.mapping import MappingFile, load_mapping
from daemon.tools.common import EXIT_OK, EXIT_PROBLEMS

# The dry-run pipeline of a preview finishes in milliseconds; this only bounds a bug.
PREVIEW_TIMEOUT_SECONDS = 5.0
PREVIEW_TOPIC = "preview"


# -- arguments -----------------------------------------------------------------------------


def add_parser(commands: Any) -> None:  # argparse's subparsers action has no public type
    """Register `mapping check` and `mapping preview`."""
    mapping = commands.add_parser("mapping", help="check a mapping file, or preview a record")
    actions = mapping.add_subparsers(dest="mapping_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a mapping file as start-up would")
    check.add_argument("file", type=Path, help="the mapping file (YAML)")
    check.set_defaults(handler=run_check)
    preview = actions.add_parser(
        "preview",
        help="print the event and the requests one record becomes (reads the record's value "
        "from standard input; sends nothing)",
    )
    preview.add_argument("file", type=Path, help="the mapping file (YAML)")
    preview.add_argument(
        "--topic", help="the topic the record is on (default: the file's only topic)"
    )
    preview.add_argument("--key", help="the record key (text)")
    preview.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a record header, e.g. ce_type=customer.created (repeatable)",
    )
    preview.add_argument(
        "--record-source",
        default="pivotal-sync",
        help="metadata.source of created records (PIVOTAL_SYNC_RECORD_SOURCE of the daemon)",
    )
    preview.set_defaults(handler=run_preview)


# -- run -----------------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(args.file)
    except MappingFileError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return EXIT_PROBLEMS
    print(render_check(mapping))
    return EXIT_OK


def run_preview(args: argparse.Namespace) -> int:
    try:
        mapping = load_mapping(args.file)
    except MappingFileError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return EXIT_PROBLEMS
    record = RecordRef(
        topic=_topic(mapping, args.topic),
        partition=0,
        offset=0,
        key=args.key.encode() if args.key is not None else None,
        value=_value(sys.stdin.read()),
        headers=tuple(_header(text) for text in args.header),
    )
    # The dry-run client logs each planned request; the rendering below is the output.
    logs.configure(level="error")
    result = asyncio.run(preview(mapping, record, record_source=args.record_source))
    print(render_preview(result))
    return EXIT_PROBLEMS if result.dead_letter else EXIT_OK


def _topic(mapping: MappingFile, topic: str | None) -> str:
    if topic is not None:
        return topic
    if len(mapping.declared) == 1:
        return next(iter(mapping.declared))
    if not mapping.declared:
        return PREVIEW_TOPIC
    names = ", ".join(sorted(mapping.declared))
    raise ConfigError("--topic", f"the file maps several topics ({names}): name one")


def _value(text: str) -> bytes | None:
    # `null` alone is a tombstone; anything else is the value as given (JSON or not).
    return None if text.strip() == "null" else text.strip().encode()


def _header(text: str) -> tuple[str, bytes]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise ConfigError("--header", f"{text!r} is not NAME=VALUE")
    return name, value.encode()


@dataclass
class Scenario:
    """The requests for one assumption about what Pivotal already has."""

    title: str
    requests: list[dict[str, Any]]
    # How the event would finish: sent, noop, or the dead letter it would become.
    outcome: str


@dataclass
class Preview:
    event: Event | None = None
    skip: Skip | None = None
    dead_letter: InvalidEventError | None = None
    scenarios: list[Scenario] = field(default_factory=list)


async def preview(mapping: MappingFile, record: RecordRef, *, record_source: str) -> Preview:
    """Decode `record`, then plan its requests with the daemon's own dispatcher (dry run)."""
    try:
        decoded = mapping.decode(record)
    except InvalidEventError as error:
        return Preview(dead_letter=error)
    if isinstance(decoded, Skip):
        return Preview(skip=decoded)
    result = Preview(event=decoded)
    new = f"when {decoded.entity} is new to Pivotal"
    result.scenarios.append(await _plan(decoded, new, known=False, source=record_source))
    known = f"when Pivotal has {decoded.entity} as {_placeholder(decoded.entity)}"
    result.scenarios.append(await _plan(decoded, known, known=True, source=record_source))
    return result


def _placeholder(key: EntityKey) -> str:
    return f"<{key.kind}:{key.external_id}>"


async def _plan(event: Event, title: str, *, known: bool, source: str) -> Scenario:
    # Imported here: the dispatcher's graph is only needed by a preview.
    from daemon.admitted import Admitted  # noqa: PLC0415
    from daemon.dispatcher import Dispatcher  # noqa: PLC0415
    from daemon.dry_run import DryRunApi, UnlimitedPacer  # noqa: PLC0415
    from daemon.entities import EntityCache  # noqa: PLC0415
    from daemon.metrics import Metrics  # noqa: PLC0415
    from daemon.outcomes import EntityState, Finished  # noqa: PLC0415
    from daemon.progress import Progress  # noqa: PLC0415
    from daemon.recorder import Recorder  # noqa: PLC0415
    from daemon.scheduler import Scheduler  # noqa: PLC0415

    entities = EntityCache()
    lane = event.customer_external_id
    parent = EntityKey(kind=EntityKind.CUSTOMER, external_id=lane)
    # The customer of a contact or onboarding is known either way (else the child waits for
    # it); the entity itself is known only in the second scenario.
    for key in {parent, event.entity}:
        if key != event.entity or known:
            entities.put(
                EntityState(key=key, pivotal_id=_placeholder(key), customer_external_id=lane)
            )

    class Outcomes(Recorder):
        """Keeps what the dispatcher finishes, and says when the event is finished."""

        def __init__(self) -> None:
            super().__init__(
                store=None,
                progress=Progress(),
                metrics=metrics,
                flush_interval_seconds=1,
                batch_size=10,
                admitted=Admitted(),
            )
            self.finished: list[Finished] = []
            self.done = asyncio.Event()

        def add(self, finished: Sequence[Finished], entities: Sequence[EntityState] = ()) -> None:
            self.finished += finished
            self.done.set()

    api, scheduler, metrics = DryRunApi(), Scheduler(), Metrics()
    recorder = Outcomes()
    dispatcher = Dispatcher(
        api=api,
        pacer=UnlimitedPacer(),
        scheduler=scheduler,
        entities=entities,
        recorder=recorder,
        held_records=None,  # one event: nothing is merged, nothing to read back
        intents=None,
        metrics=metrics,
        workers=1,
        record_source=source,
        adopt_slug_conflicts=True,
        parent_timeout_seconds=PREVIEW_TIMEOUT_SECONDS,
        auth_probe_interval_seconds=PREVIEW_TIMEOUT_SECONDS,
    )
    dispatcher.submit(event)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop, PREVIEW_TIMEOUT_SECONDS))
    async with asyncio.timeout(PREVIEW_TIMEOUT_SECONDS):
        await recorder.done.wait()
    stop.set()
    await running
    outcome = recorder.finished[0]
    letter = outcome.dead_letter
    if letter is not None:
        return Scenario(title, api.planned, f"dead letter: {letter.reason}: {letter.detail}")
    return Scenario(title, api.planned, outcome.outcome.value)


# -- render --------------------------------------------------------------------------------


def render_check(mapping: MappingFile) -> str:
    lines = [f"{mapping.path}: valid"]
    for topic in sorted(mapping.declared):
        rules = mapping.topics.get(topic)
        if rules is None:
            lines.append(f"  {topic}: cloudevents, the built-in contract")
        else:
            fields = ", ".join(rule.name for rule in rules.fields) or "no fields"
            lines.append(f"  {topic}: {rules.format} → {rules.kind} ({fields})")
    return "\n".join(lines)


def render_preview(result: Preview) -> str:
    if result.dead_letter is not None:
        error = result.dead_letter
        return f"dead letter: {error.reason}: {error.detail}\nno request"
    if result.skip is not None:
        return f"skipped (noop): {result.skip.reason}: {result.skip.detail}\nno request"
    assert result.event is not None
    lines = ["event", *_event_lines(result.event)]
    for scenario in result.scenarios:
        lines += ["", f"requests {scenario.title}:"]
        lines += [_request_line(request) for request in scenario.requests]
        lines.append(f"  → {scenario.outcome}")
    return "\n".join(lines)


def _event_lines(event: Event) -> list[str]:
    values: list[tuple[str, Any]] = [
        ("id", event.id),
        ("type", event.type),
        ("entity", str(event.entity)),
        ("customer", event.customer_external_id),
        ("action", event.action.value),
        ("sequence", event.sequence),
        ("fields", _json(dict(event.fields))),
    ]
    return [f"  {name}: {value}" for name, value in values if value is not None]


def _request_line(request: dict[str, Any]) -> str:
    line = f"  {request['method']} {request['path']}"
    if "idempotency_key" in request:
        line += f"\n    Idempotency-Key: {request['idempotency_key']}"
    if "body" in request:
        line += f"\n    {_json(request['body'])}"
    return line


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
