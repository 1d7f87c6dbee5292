"""Sample CRM streams: what the demo publishes, and what the tests and benchmarks check against.

`generate` builds a realistic, reproducible stream (creates, repeated updates, contacts,
onboardings, deletes, a few malformed records) with per-customer order preserved and customers
interleaved, as a CRM's outbox would emit them. `expected_state` applies the valid events in
order to a model of Pivotal — the state the daemon must reach, whatever it coalesced or retried.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Action, EntityKind, RecordRef, parse_record
from daemon.kafka_clients import KafkaClients
from daemon.tools.importing import Outgoing, produce

STATUSES = ("onboarding", "active", "at_risk")
PHASES = ("before_getting_started", "program_design", "review", "program_buildout", "launch")
PLANS = ("starter", "growth", "enterprise")


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes | None
    value: bytes | None


@dataclass
class StreamSpec:
    customers: int = 300
    updates_per_customer: int = 3
    contacts_per_customer: int = 2
    onboarding_fraction: float = 0.7
    customer_delete_fraction: float = 0.05
    contact_delete_fraction: float = 0.1
    malformed: int = 20
    seed: int = 7
    prefix: str = "cus"
    with_sequence: bool = True


@dataclass
class _Counter:
    n: int = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def _event(  # noqa: PLR0917 - a private builder, called with the event's fields in order
    ids: _Counter,
    prefix: str,
    type_: str,
    subject: str,
    data: dict[str, Any] | None,
    seq: int | None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt_{prefix}_{ids.next():07d}",
        "source": "crm/sample",
        "type": type_,
        "subject": subject,
        "time": "2026-11-26T10:00:00Z",
    }
    if data is not None:
        event["data"] = data
    if seq is not None:
        event["sequence"] = str(seq)
    return event


def _customer_story(
    i: int, spec: StreamSpec, rng: random.Random, ids: _Counter
) -> list[dict[str, Any]]:
    """Every event of one customer, in the order the CRM emits them."""
    cid = f"{spec.prefix}_{i:05d}"
    seqs: dict[str, int] = {}

    def seq(entity: str) -> int | None:
        if not spec.with_sequence:
            return None
        seqs[entity] = seqs.get(entity, 0) + 1
        return seqs[entity]

    story = [
        _event(
            ids,
            spec.prefix,
            "customer.created",
            cid,
            {
                "name": f"Customer {i}",
                "slug": f"{spec.prefix}-{i:05d}",
                "domain": f"c{i}.example.com",
                "status": "onboarding",
                "plan": rng.choice(PLANS),
            },
            seq(cid),
        )
    ]
    children: list[list[dict[str, Any]]] = []
    for j in range(spec.contacts_per_customer):
        kid = f"{cid}_ct{j}"
        events = [
            _event(
                ids,
                spec.prefix,
                "contact.created",
                kid,
                {
                    "customer": cid,
                    "name": f"Contact {i}.{j}",
                    "email": f"person{j}@c{i}.example.com",
                },
                seq(kid),
            )
        ]
        if rng.random() < 0.5:
            events.append(
                _event(
                    ids,
                    spec.prefix,
                    "contact.updated",
                    kid,
                    {
                        "customer": cid,
                        "title": rng.choice(["CEO", "CTO", "Ops lead"]),
                    },
                    seq(kid),
                )
            )
        if rng.random() < spec.contact_delete_fraction:
            events.append(
                _event(ids, spec.prefix, "contact.deleted", kid, {"customer": cid}, seq(kid))
            )
        children.append(events)
    if rng.random() < spec.onboarding_fraction:
        oid = f"{cid}_ob"
        events = [_event(ids, spec.prefix, "onboarding.created", oid, {"customer": cid}, seq(oid))]
        for phase in PHASES[1 : 1 + rng.randint(0, 3)]:
            events.append(
                _event(
                    ids,
                    spec.prefix,
                    "onboarding.updated",
                    oid,
                    {
                        "customer": cid,
                        "phase": phase,
                    },
                    seq(oid),
                )
            )
        children.append(events)
    updates = [
        _event(
            ids,
            spec.prefix,
            "customer.updated",
            cid,
            {
                "status": rng.choice(STATUSES),
                "mrr": rng.randint(0, 500_000),
            },
            seq(cid),
        )
        for _ in range(spec.updates_per_customer)
    ]
    # Interleave children and updates as a CRM would, keeping each entity's own order.
    streams = [*children, updates]
    while any(streams):
        pick = rng.choice([s for s in streams if s])
        story.append(pick.pop(0))
    if rng.random() < spec.customer_delete_fraction:
        story.append(_event(ids, spec.prefix, "customer.deleted", cid, None, seq(cid)))
    return story


def _malformed(k: int, rng: random.Random, prefix: str) -> Message:
    cid = f"{prefix}_{rng.randint(0, 9):05d}".encode()
    kinds = [
        b"{not json",
        json.dumps({"specversion": "1.0", "type": "customer.updated", "source": "crm"}).encode(),
        json.dumps(
            {
                "specversion": "1.0",
                "id": f"bad_{prefix}_{k}",
                "source": "crm",
                "type": "customer.renamed",
                "subject": cid.decode(),
                "data": {},
            }
        ).encode(),
        json.dumps(
            {
                "specversion": "1.0",
                "id": f"bad_{prefix}_{k}",
                "source": "crm",
                "type": "customer.updated",
                "subject": cid.decode(),
                "data": {"status": "bogus"},
            }
        ).encode(),
        json.dumps(
            {
                "specversion": "1.0",
                "id": f"bad_{prefix}_{k}",
                "source": "crm",
                "type": "customer.updated",
                "subject": cid.decode(),
                "data": {"mrr": "a lot"},
            }
        ).encode(),
    ]
    return Message(key=cid, value=kinds[k % len(kinds)])


def generate(spec: StreamSpec) -> list[Message]:
    """The whole stream, customers interleaved, malformed records sprinkled in."""
    rng = random.Random(spec.seed)
    ids = _Counter()
    stories = [_customer_story(i, spec, rng, ids) for i in range(spec.customers)]
    messages: list[Message] = []
    while any(stories):
        live = [s for s in stories if s]
        story = rng.choice(live)
        event = story.pop(0)
        cid = (
            event["subject"] if event["type"].startswith("customer.") else event["data"]["customer"]
        )
        messages.append(Message(key=cid.encode(), value=json.dumps(event).encode()))
    for k in range(spec.malformed):
        messages.insert(rng.randint(0, len(messages)), _malformed(k, rng, spec.prefix))
    return messages


@dataclass
class ExpectedState:
    """The model of Pivotal after the stream: live entities by external id, with their fields."""

    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    onboardings: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    invalid: int = 0
    valid: int = 0

    def table(self, kind: EntityKind) -> dict[str, dict[str, Any]]:
        return {
            EntityKind.CUSTOMER: self.customers,
            EntityKind.CONTACT: self.contacts,
            EntityKind.ONBOARDING: self.onboardings,
        }[kind]


def expected_state(messages: Iterable[Message], topic: str = "t") -> ExpectedState:
    state = ExpectedState()
    seen: set[str] = set()
    for offset, message in enumerate(messages):
        record = RecordRef(
            topic=topic, partition=0, offset=offset, key=message.key, value=message.value
        )
        try:
            event = parse_record(record)
        except InvalidEventError:
            state.invalid += 1
            continue
        if event.id in seen:
            continue
        seen.add(event.id)
        state.valid += 1
        table = state.table(event.entity.kind)
        ext = event.entity.external_id
        if event.action is Action.DELETE:
            table.pop(ext, None)
            state.deleted.add((event.entity.kind.value, ext))
        else:
            state.deleted.discard((event.entity.kind.value, ext))
            table.setdefault(ext, {"customer": event.customer_external_id}).update(event.fields)
    return state


async def publish(
    bootstrap_servers: str | KafkaClients, topic: str, messages: Sequence[Message]
) -> dict[int, int]:
    """Publish in order, as `pivotal-sync import` does; the end offset written per partition.

    `bootstrap_servers`: a plaintext broker's address, or the clients of a secured cluster."""
    kafka = (
        bootstrap_servers
        if isinstance(bootstrap_servers, KafkaClients)
        else KafkaClients.plaintext(bootstrap_servers)
    )
    records = [Outgoing(key=m.key, value=m.value) for m in messages]
    return (await produce(kafka, topic, records)).end_offsets


def compare(expected: ExpectedState, records: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Differences between the model and the sandbox's records (`/_sandbox/records`).

    Empty means: every expected entity exists exactly once, live, traceable by
    `metadata.external_id`, with every field the stream set, under the right parent; every
    deleted one is gone; and nothing else was created."""
    problems: list[str] = []
    owners: dict[str, str] = {}  # Pivotal id → external id, deleted records included
    for kind in EntityKind:
        live = _live_by_external_id(kind, records, owners, problems)
        problems += _compare_kind(kind, expected.table(kind), live)
    for kind in (EntityKind.CONTACT, EntityKind.ONBOARDING):
        for external_id, copies in _live_by_external_id(kind, records, {}, []).items():
            fields = expected.table(kind).get(external_id)
            parent = owners.get(copies[0].get("customer_id") or "")
            if fields is not None and parent != fields["customer"]:
                problems.append(
                    f"{kind} {external_id} belongs to {parent}, expected {fields['customer']}"
                )
    return problems


def _live_by_external_id(
    kind: EntityKind,
    records: Mapping[str, list[dict[str, Any]]],
    owners: dict[str, str],
    problems: list[str],
) -> dict[str, list[dict[str, Any]]]:
    live: dict[str, list[dict[str, Any]]] = {}
    for record in records.get(f"{kind.value}s", []):
        external_id = (record.get("metadata") or {}).get("external_id")
        if external_id is None:
            problems.append(f"{kind} {record.get('id')} has no metadata.external_id")
            continue
        owners[record["id"]] = external_id
        if record.get("deleted_at") is None:
            live.setdefault(external_id, []).append(record)
    return live


def _compare_kind(
    kind: EntityKind, table: dict[str, dict[str, Any]], live: dict[str, list[dict[str, Any]]]
) -> list[str]:
    problems: list[str] = []
    for external_id, copies in live.items():
        if len(copies) > 1:
            problems.append(f"{kind} {external_id} exists {len(copies)} times")
        if external_id not in table:
            problems.append(f"{kind} {external_id} is live but should not exist")
    for external_id, fields in table.items():
        if external_id not in live:
            problems.append(f"{kind} {external_id} is missing")
            continue
        record = live[external_id][0]
        for name, value in fields.items():
            have = record.get(name)
            # Pivotal lower-cases e-mail addresses.
            want = value.lower() if name == "email" and isinstance(value, str) else value
            if name != "customer" and have != want:
                problems.append(f"{kind} {external_id}.{name} = {have!r}, expected {want!r}")
    return problems
