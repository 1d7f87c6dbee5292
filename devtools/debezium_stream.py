"""A Debezium-shaped CRM stream: the sample stream as a CRM database's change data capture.

Each customer, contact and onboarding of `sample_stream.generate` becomes a row of one of three
tables (`accounts`, `people`, `projects`), each on its own topic, with the CRM's own column
names; `MAPPING` maps them back onto Pivotal's fields. Creates are `c`, updates `u` with the
before and after images, deletes `d` followed by a tombstone; `source.lsn` grows with the
stream. The final Pivotal state is the one the CloudEvents stream gives (`expected_state`).

Kafka orders records only within a partition, so a row of one table can overtake a row of
another: an account deleted right after its people were created could be read first and leave
them without a parent. The stream therefore deletes no account (`customer_delete_fraction=0`);
people and projects are deleted as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Action, EntityKind, RecordRef, parse_record
from devtools.sample_stream import Message

TABLES: Mapping[EntityKind, str] = {
    EntityKind.CUSTOMER: "accounts",
    EntityKind.CONTACT: "people",
    EntityKind.ONBOARDING: "projects",
}
PRIMARY_KEYS: Mapping[EntityKind, str] = {
    EntityKind.CUSTOMER: "account_id",
    EntityKind.CONTACT: "person_id",
    EntityKind.ONBOARDING: "project_id",
}
# Pivotal field → the CRM's column.
COLUMNS: Mapping[EntityKind, Mapping[str, str]] = {
    EntityKind.CUSTOMER: {
        "name": "company_name",
        "slug": "account_slug",
        "domain": "website",
        "status": "stage",
        "plan": "tier",
        "mrr": "monthly_revenue",
    },
    EntityKind.CONTACT: {"name": "full_name", "email": "email_address", "title": "job_title"},
    EntityKind.ONBOARDING: {"phase": "milestone", "state": "health", "name": "project_name"},
}
FIRST_LSN = 10_000


def mapping_yaml(topics: Mapping[EntityKind, str]) -> str:
    """The mapping file for the three topics."""
    lines = ["topics:"]
    for kind, topic in topics.items():
        lines += [
            f"  {topic}:",
            "    format: debezium",
            f"    kind: {kind}",
            f"    id: {PRIMARY_KEYS[kind]}",
        ]
        if kind is not EntityKind.CUSTOMER:
            lines.append("    customer: account_id")
        lines.append("    fields:")
        lines += [f"      {name}: {column}" for name, column in COLUMNS[kind].items()]
    return "\n".join(lines) + "\n"


@dataclass
class DebeziumStream:
    """Per table, the records in the order the CRM database committed them."""

    tables: dict[EntityKind, list[Message]] = field(
        default_factory=lambda: {kind: [] for kind in EntityKind}
    )
    invalid: int = 0

    def __len__(self) -> int:
        return sum(len(messages) for messages in self.tables.values())


def debezium_stream(messages: Iterable[Message]) -> DebeziumStream:
    """The CloudEvents stream's valid events as row changes; plus two broken records."""
    stream = DebeziumStream()
    rows: dict[tuple[EntityKind, str], dict[str, Any]] = {}
    for lsn, message in enumerate(messages, start=FIRST_LSN):
        record = RecordRef(topic="t", partition=0, offset=0, key=message.key, value=message.value)
        try:
            event = parse_record(record)
        except InvalidEventError:
            continue  # the CloudEvents stream's broken records have no Debezium twin
        kind, pk = event.entity.kind, PRIMARY_KEYS[event.entity.kind]
        where = (kind, event.entity.external_id)
        before = rows.get(where)
        if event.action is Action.DELETE:
            op, after = "d", None
            rows.pop(where, None)
            before = before or {pk: event.entity.external_id}
        else:
            op = "u" if before is not None else "c"
            after = dict(before or {pk: event.entity.external_id})
            if kind is not EntityKind.CUSTOMER:
                after["account_id"] = event.customer_external_id
            after.update({COLUMNS[kind][name]: value for name, value in event.fields.items()})
            rows[where] = after
        payload = {
            "op": op,
            "before": before,
            "after": after,
            "source": {"connector": "postgresql", "db": "crm", "table": TABLES[kind], "lsn": lsn},
        }
        key = json.dumps({pk: event.entity.external_id}).encode()
        stream.tables[kind].append(Message(key=key, value=json.dumps(payload).encode()))
        if op == "d":
            stream.tables[kind].append(Message(key=key, value=None))
    broken = [b"{not json", json.dumps({"op": "t", "before": None, "after": None}).encode()]
    stream.tables[EntityKind.CUSTOMER] += [Message(key=b"{}", value=value) for value in broken]
    stream.invalid = len(broken)
    return stream
