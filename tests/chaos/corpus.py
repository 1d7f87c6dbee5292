"""The hostile-input corpus: records an operator's worst week brings, and what each must cost.

Every item is a customer event for its own entity (`hostile_<name>`), so its effect can be
checked alone: `dead` items must cost exactly one dead letter with that reason and create
nothing; `synced` items are odd but valid and must reach Pivotal with exactly these fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The sandbox rule that makes a long name a 400 (a field Pivotal refuses).
MAX_NAME_CHARS = 200
INTERNAL_ERROR_ENTITY = "hostile_internal_exception"


@dataclass(frozen=True)
class Item:
    name: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    dead: str | None = None  # the dead-letter reason it must get
    synced: dict[str, Any] = field(default_factory=dict)  # the fields Pivotal must hold

    @property
    def external_id(self) -> str:
        return f"hostile_{self.name}"


def _event(name: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"evt_hostile_{name}",
        "source": "crm/chaos",
        "type": "customer.created",
        "subject": f"hostile_{name}",
        "time": "2026-11-26T10:00:00Z",
        "data": data,
        **extra,
    }


def _item(name: str, data: Any, *, dead: str | None = None, **extra: Any) -> Item:
    value = json.dumps(_event(name, data, **extra)).encode()
    synced = {} if dead else dict(data)
    return Item(name, f"hostile_{name}".encode(), value, dead=dead, synced=synced)


def _raw(
    name: str, data_json: str, *, dead: str | None, synced: dict[str, Any] | None = None
) -> Item:
    """An event whose `data` is written by hand (what json.dumps would never produce)."""
    head = json.dumps(_event(name, None))[: -len(', "data": null}')]
    value = f'{head}, "data": {data_json}}}'.encode()
    return Item(name, f"hostile_{name}".encode(), value, dead=dead, synced=synced or {})


def _nested(depth: int) -> str:
    return '{"name": "deep", "metadata": {"x": ' + "[" * depth + "]" * depth + "}}"


def corpus() -> list[Item]:
    megabyte_metadata = {f"part{i}": "m" * 50_000 for i in range(19)}
    huge_array = {"name": "wide", "metadata": {"ids": list(range(100_000))}}
    flood = tuple((f"x-flood-{i}", b"f" * 400) for i in range(3_000))
    return [
        _raw("deep_40", _nested(40), dead="too_deep"),
        # Around CPython's limit (~1,000 levels, less the stack in use): some of these decode and
        # then break the recursive encoders further down the stack — the poison record.
        *(_raw(f"deep_{depth}", _nested(depth), dead="too_deep") for depth in range(950, 1000, 4)),
        _raw("deep_5000", _nested(5000), dead="too_deep"),
        _item("one_megabyte", {"name": "big", "metadata": megabyte_metadata}),
        _item(
            "ten_megabytes",
            {"name": "huge", "metadata": {"x": "t" * 10_000_000}},
            dead="record_too_large",
        ),
        Item("invalid_utf8", b"hostile_invalid_utf8", b'{"id": "\xff\xfe"}', dead="invalid_json"),
        _item("nul_byte", {"name": "nul\u0000inside"}),
        _item("surrogate_pair", {"name": "smile \U0001f600"}),
        _raw("lone_surrogate", '{"name": "half \\ud83d"}', dead="invalid_field"),
        _raw(
            "duplicate_keys",
            '{"name": "first", "name": "second"}',
            dead=None,
            synced={"name": "second"},
        ),
        _raw("float_overflow", '{"name": "inf", "mrr": 1e400}', dead="invalid_field"),
        _raw("int_overflow", '{"name": "big int", "mrr": ' + "9" * 5000 + "}", dead="invalid_json"),
        _item("huge_array", huge_array),
        Item(
            "header_flood",
            b"hostile_header_flood",
            json.dumps(_event("header_flood", {"name": "flood"})).encode(),
            headers=flood,
            dead="record_too_large",
        ),
        _item("long_id", {"name": "x"}, dead="not_cloudevent", id="i" * 10_000),
        Item(
            "long_key",
            b"k" * 100_000,
            json.dumps(_event("long_key", {"name": "long key"})).encode(),
            synced={"name": "long key"},
        ),
        _item(
            "rtl_zero_width",
            {"name": "\u202eevil\u202c \u0645\u0631\u062d\u0628\u0627 a\u200bb\ufeff"},
        ),
        _item("refused_field", {"name": "n" * (MAX_NAME_CHARS + 1)}, dead="http_400"),
        # The daemon runs with INJECT_INTERNAL_ERROR (tests/chaos/support.py): a bug only this
        # record meets.
        _item(
            INTERNAL_ERROR_ENTITY.removeprefix("hostile_"), {"name": "bug"}, dead="internal_error"
        ),
    ]
