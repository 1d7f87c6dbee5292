"""Intake limits: what one record may weigh before it costs a request, a lane or a stuck partition.

Every check here runs at intake, before any request, and refuses with an `InvalidEventError`
whose reason is one of `LIMIT_REASONS`: the record becomes its own dead letter and the partition
keeps moving. Without them one hostile record could stop the stream: a value nested ~1,000
levels deep decodes, then fails with a `RecursionError` wherever it is walked again (the request
body encoder, the dead-letter tools); a `sequence` of 2^63-1 makes every later real update of
its entity look stale, for good.

    check_record(record)              size and gross nesting, before the value is decoded
    check_event(event)                nesting depth, string length, what JSON cannot carry
    check_sequence(event, applied)    a sequence implausibly far ahead of the entity's history

The numbers are settings (`PIVOTAL_SYNC_MAX_*`, daemon/config.py); the defaults below are far
above any real CRM change event and far below what breaks something.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef

# Kafka's own default message.max.bytes is 1 MiB; Pivotal refuses bodies above 1 MiB too.
MAX_RECORD_BYTES = 1024 * 1024
# JSON nesting (objects and arrays) of an event's `data`. CPython's decoder accepts ~1,000
# levels and its encoders fail near the same depth, so the limit must sit well below that.
MAX_NESTING_DEPTH = 32
# One string value anywhere in `data` (a name, a note, a metadata leaf), in characters.
MAX_FIELD_CHARS = 64 * 1024
# Levels a record's envelope adds above its fields (Debezium: {"payload": {"after": …}}).
ENVELOPE_LEVELS = 4
# How far one update may move an entity's `sequence` past the last one applied. 10^17 is over
# three years of nanosecond timestamps, three thousand years of microseconds: only a broken or
# hostile producer jumps further.
MAX_SEQUENCE_JUMP = 10**17
# An entity without history has nothing to jump from; above this a first sequence is not a
# version or a timestamp (nanoseconds since 1970 stay below it until the year 2116).
MAX_FIRST_SEQUENCE = 2**62
# A redriven record carrying this header skips the sequence bound (the operator's way out:
# `pivotal-sync dead-letters retry --accept-sequence ID`). Stale detection still applies.
ACCEPT_SEQUENCE_HEADER = "pivotal-sync-accept-sequence"

LIMIT_REASONS = (
    "record_too_large",  # key + value + headers above max_record_bytes
    "too_deep",  # `data` nested deeper than max_nesting_depth
    "field_too_long",  # a string in `data` longer than max_field_chars
    "sequence_implausible",  # `sequence` implausibly far ahead of the entity's history
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """The intake limits in force (from the settings; the defaults are the safe ones)."""

    max_record_bytes: int = MAX_RECORD_BYTES
    max_nesting_depth: int = MAX_NESTING_DEPTH
    max_field_chars: int = MAX_FIELD_CHARS
    max_sequence_jump: int = MAX_SEQUENCE_JUMP

    def check_record(self, record: RecordRef) -> None:
        """Refuse a record heavier than `max_record_bytes`, or nested far too deep, before its
        value is decoded."""
        size = record_bytes(record)
        if size > self.max_record_bytes:
            raise InvalidEventError(
                "record_too_large",
                f"record is {size:,} bytes; the limit is {self.max_record_bytes:,} "
                "(PIVOTAL_SYNC_MAX_RECORD_BYTES)",
            )
        self.check_raw_depth(record)

    def check_raw_depth(self, record: RecordRef) -> None:
        """Refuse a value nested far deeper than allowed before it is decoded: whether CPython's
        decoder takes ~1,000 levels depends on how deep the stack already is, so a document
        near that depth would decode in one place and break the encoders in another."""
        if record.value is None:
            return
        # The envelope's levels (a CloudEvent and its `data`, or Debezium's `payload` and
        # `after`) come on top; check_event applies the exact limit to the decoded fields.
        allowed = self.max_nesting_depth + ENVELOPE_LEVELS
        if bracket_bound(record.value) <= allowed:
            return
        depth = raw_nesting_depth(record.value)
        if depth > allowed:
            raise InvalidEventError(
                "too_deep",
                f"the value is nested {depth} levels deep; `data` may nest "
                f"{self.max_nesting_depth} (PIVOTAL_SYNC_MAX_NESTING_DEPTH)",
            )

    def check_event(self, event: Event) -> None:
        """Refuse fields nested too deep or holding an over-long string."""
        if not _within(event.fields, self.max_nesting_depth, self.max_field_chars):
            self._refuse(event.fields)

    def _refuse(self, fields: Mapping[str, Any]) -> None:
        """Raise for the first problem in `_walk`'s order, naming its path: the detail every
        refusal has always had, at a cost only refused records pay."""
        for path, depth, value in _walk(fields):
            if depth > self.max_nesting_depth:
                raise InvalidEventError(
                    "too_deep",
                    f"{_clip(path, 120)} is nested more than {self.max_nesting_depth} levels deep "
                    "(PIVOTAL_SYNC_MAX_NESTING_DEPTH)",
                )
            problem = _unsendable(value)
            if problem:
                raise InvalidEventError("invalid_field", f"{_clip(path, 120)}: {problem}")
            longest = _longest_string(value)
            if longest > self.max_field_chars:
                raise InvalidEventError(
                    "field_too_long",
                    f"{_clip(path, 120)} holds {longest:,} characters; the limit is "
                    f"{self.max_field_chars:,} (PIVOTAL_SYNC_MAX_FIELD_CHARS)",
                )

    def check_sequence(self, event: Event, applied: int | None) -> None:
        """Refuse a `sequence` implausibly far ahead of `applied` (the entity's last one)."""
        if event.sequence is None or _accepted_by_operator(event.record):
            return
        if applied is None:
            if event.sequence > MAX_FIRST_SEQUENCE:
                raise InvalidEventError(
                    "sequence_implausible",
                    f"sequence {event.sequence} is above {MAX_FIRST_SEQUENCE} for an entity "
                    "without history; `dead-letters retry --accept-sequence` applies it anyway",
                )
            return
        if event.sequence - applied > self.max_sequence_jump:
            raise InvalidEventError(
                "sequence_implausible",
                f"sequence {event.sequence} is more than {self.max_sequence_jump} ahead of the "
                f"last applied ({applied}) (PIVOTAL_SYNC_MAX_SEQUENCE_JUMP); "
                "`dead-letters retry --accept-sequence` applies it anyway",
            )


_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def raw_nesting_depth(value: bytes) -> int:
    """The deepest bracket nesting of JSON text, strings skipped, without decoding it. Visits
    only quotes, backslashes and brackets, so a megabyte of text costs little."""
    deepest = depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(value):
        position, char = match.start(), match.group()
        if position == escaped_at:
            continue
        if in_string:
            if char == b"\\":
                escaped_at = position + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif char in (b"]", b"}"):
            depth -= 1
    return deepest


def bracket_bound(value: bytes) -> int:
    """An upper bound of `raw_nesting_depth(value)` at C speed (~0.1 µs against ~15 µs for the
    scan of an ordinary event): every level the scan counts opens with a `{` or `[` byte, so it
    can never count more levels than there are such bytes. The bound only over-counts (brackets
    inside strings), so a value within it is within the limit, exactly as the scan would say."""
    return value.count(b"{") + value.count(b"[")


def record_bytes(record: RecordRef) -> int:
    """What a record weighs on the wire, near enough: key, value and every header."""
    size = len(record.key or b"") + len(record.value or b"")
    if not record.headers:  # most records: no generator to set up for nothing
        return size
    return size + sum(len(name) + len(value) for name, value in record.headers)


def nesting_depth(value: Any) -> int:
    """How deep `value` nests (a scalar is 1), measured without recursion."""
    deepest, stack = 0, [(1, value)]
    while stack:
        depth, item = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((depth + 1, v) for v in item.values())
        elif isinstance(item, list):
            stack.extend((depth + 1, v) for v in item)
    return deepest


def _accepted_by_operator(record: RecordRef) -> bool:
    return any(name == ACCEPT_SEQUENCE_HEADER for name, _ in record.headers)


def _walk(fields: Mapping[str, Any]) -> Iterator[tuple[str, int, Any]]:
    """Every value under `fields` as (path, depth, value), without recursion: the point is to
    measure documents too deep for recursive code. `data` itself is depth 1."""
    stack: list[tuple[str, int, Any]] = [("data", 1, fields)]
    while stack:
        path, depth, value = stack.pop()
        yield path, depth, value
        if isinstance(value, dict):
            stack.extend((f"{path}.{_clip(str(k))}", depth + 1, v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", depth + 1, v) for i, v in enumerate(value))


def _within(fields: Mapping[str, Any], max_depth: int, max_chars: int) -> bool:
    """Whether `_walk` would find nothing for check_event to refuse, without naming paths: the
    same checks of every value (depth, what JSON cannot carry, string and key lengths), but
    each container's scalars are checked in its own loop instead of each becoming a formatted
    path on the stack, which cost more than the checks themselves."""
    pending: list[tuple[int, Any]] = [(1, fields)]
    while pending:
        depth, value = pending.pop()
        if depth > max_depth:
            return False
        if isinstance(value, dict):
            if not _fine_keys(value, max_chars):
                return False
            children: Iterable[Any] = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue  # only `fields` itself can be neither (a Mapping that is no dict)
        if not _fine_children(children, depth + 1, max_depth, max_chars, pending):
            return False
    return True


def _fine_keys(value: dict[Any, Any], max_chars: int) -> bool:
    for key in value:  # noqa: SIM110 - all() of a generator costs more than a few keys
        if not _fine_text(str(key), max_chars):
            return False
    return True


def _fine_children(
    children: Iterable[Any],
    depth: int,
    max_depth: int,
    max_chars: int,
    pending: list[tuple[int, Any]],
) -> bool:
    """Check one container's scalars (at `depth`); queue its containers on `pending`."""
    for child in children:
        if isinstance(child, str):
            # Strings, the most common value, without a call per value.
            if len(child) > max_chars or not (child.isascii() or _encodable(child)):
                return False
        elif isinstance(child, dict | list):
            pending.append((depth, child))
            continue
        elif isinstance(child, float) and not math.isfinite(child):
            return False
        if depth > max_depth:
            return False
    return True


def _fine_text(text: str, max_chars: int) -> bool:
    # isascii() reads a flag CPython keeps on every string; only other strings can hold a lone
    # surrogate, so only they pay for the trial encoding.
    return len(text) <= max_chars and (text.isascii() or _encodable(text))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unsendable(value: Any) -> str | None:
    """What JSON text cannot carry although the decoder produced it: 1e400 decodes to
    infinity (the encoder would write `Infinity`, which is not JSON), and "\\ud800" to a lone
    surrogate (no UTF-8 encoding exists, so building the request would fail)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "a number beyond the range of a double"
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
    for text in texts:
        try:
            str(text).encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode (a lone surrogate)"
    return None


def _longest_string(value: Any) -> int:
    """A string's length; for an object, its longest key (keys are strings Pivotal stores too)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((len(str(k)) for k in value), default=0)
    return 0


def _clip(name: str, limit: int = 40) -> str:
    # A hostile key must not make the detail (a dead-letter column, a log field) huge.
    return name if len(name) <= limit else name[: limit - 1] + "…"
