"""Debezium JSON change events: one row change of one table, as Kafka Connect's JSON converter
writes it, with the `schema`/`payload` envelope (`schemas.enable=true`) or without.

    read_change(record) -> Change | None     None for a tombstone; InvalidEventError otherwise

`op` is `c` (insert), `r` (a snapshot read), `u` (update) or `d` (delete); `before` and `after`
are the row images. A primary-key change arrives as a delete of the old key, a tombstone and a
create of the new key: three records, each handled on its own. Truncate (`t`) and logical
messages (`m`) name no row and are refused.

The position of a change in the source database is its sequence, so that the scheduler's
staleness rule drops an older change replayed after a newer one. In order of preference:
`source.lsn` (PostgreSQL: a position in the write-ahead log), the binlog position (MySQL:
`source.file` and `source.pos`; `source.ts_ms` has only second precision there), `source.scn`
(Oracle), `source.ts_ms`. The last is a commit time in milliseconds: two changes of one row in
the same millisecond would make the second look stale, so a table with a version column should
name it as the mapping's `sequence`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from daemon.errors import InvalidEventError
from daemon.events import MAX_SEQUENCE, RecordRef
from daemon.formats.cloudevents import load_json

OPERATIONS = {"c": "created", "r": "created", "u": "updated", "d": "deleted"}
_BINLOG_INDEX = re.compile(r"([0-9]+)$")
# A binlog position fits in 32 bits; the file's index goes above it.
_BINLOG_POSITION_BITS = 32


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One row change, envelope removed."""

    op: str  # c, r, u or d
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    # The `source` block: connector, db, table, lsn, ts_ms, … (what the connector sends).
    source: Mapping[str, Any]
    # Position in the source database (see the module docstring), None when there is none.
    position: int | None
    # The payload as sent, for expressions that need more than the row.
    payload: Mapping[str, Any]

    @property
    def verb(self) -> str:
        return OPERATIONS[self.op]

    @property
    def row(self) -> Mapping[str, Any]:
        """The row the change is about: the new image, or the old one for a delete."""
        image = self.before if self.op == "d" else self.after
        return image or {}


def read_change(record: RecordRef) -> Change | None:
    if record.value is None:
        return None
    document = load_json(record.value)
    payload = _unwrap(document)
    if payload is None:
        return None  # an enveloped tombstone: {"schema": …, "payload": null}
    op = payload.get("op")
    if op not in OPERATIONS:
        raise InvalidEventError("not_debezium", f"op {str(op)[:20]!r} is not one of c, r, u, d")
    before, after = _image(payload, "before"), _image(payload, "after")
    if op != "d" and after is None:
        raise InvalidEventError("not_debezium", f"op {op!r} without an `after` row")
    if op == "d" and before is None:
        raise InvalidEventError("not_debezium", "op 'd' without a `before` row")
    source = payload.get("source")
    source = source if isinstance(source, dict) else {}
    return Change(
        op=op,
        before=before,
        after=after,
        source=source,
        position=position(source),
        payload=payload,
    )


def _unwrap(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict):
        raise InvalidEventError("not_debezium", "expected a JSON object")
    if "payload" in document and "schema" in document:
        payload = document["payload"]
        if payload is None or isinstance(payload, dict):
            return payload
        raise InvalidEventError("not_debezium", "`payload` is not an object")
    return document


def _image(payload: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    image = payload.get(name)
    if image is None or isinstance(image, dict):
        return image
    raise InvalidEventError("not_debezium", f"`{name}` is not an object")


def position(source: Mapping[str, Any]) -> int | None:
    """The change's position in the source database, as a non-negative bigint."""
    lsn = source.get("lsn")
    if _natural(lsn):
        return int(lsn)
    binlog, offset = source.get("file"), source.get("pos")
    if isinstance(binlog, str) and _natural(offset):
        index = _BINLOG_INDEX.search(binlog)
        if index and int(offset) < 2**_BINLOG_POSITION_BITS:
            value = (int(index.group(1)) << _BINLOG_POSITION_BITS) | int(offset)
            return value if value <= MAX_SEQUENCE else None
    scn = source.get("scn")
    if isinstance(scn, str) and scn.isascii() and scn.isdigit() and len(scn) < 19:
        return int(scn)
    ts_ms = source.get("ts_ms")
    return int(ts_ms) if _natural(ts_ms) else None


def _natural(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQUENCE
