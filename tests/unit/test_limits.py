"""Intake limits: a hostile record costs its own dead letter, with a reason, before any request."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef, parse_record
from daemon.limits import (
    ACCEPT_SEQUENCE_HEADER,
    ENVELOPE_LEVELS,
    MAX_FIRST_SEQUENCE,
    MAX_NESTING_DEPTH,
    MAX_SEQUENCE_JUMP,
    Limits,
    _within,
    bracket_bound,
    raw_nesting_depth,
    record_bytes,
)

LIMITS = Limits()


def record(
    value: bytes, *, headers: tuple[tuple[str, bytes], ...] = (), key: bytes = b"cus_1"
) -> RecordRef:
    return RecordRef(topic="crm", partition=0, offset=3, key=key, value=value, headers=headers)


def event(
    data: dict[str, Any],
    *,
    sequence: int | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Event:
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt_1",
        "source": "crm/test",
        "type": "customer.updated",
        "subject": "cus_1",
        "data": data,
    }
    if sequence is not None:
        document["sequence"] = sequence
    return parse_record(record(json.dumps(document).encode(), headers=headers))


def event_with(fields: dict[str, Any]) -> Event:
    """An event carrying `fields` as they are, even what no JSON text could hold."""
    return replace(event({"status": "active"}), fields=fields)


def nested(depth: int) -> dict[str, Any]:
    """A `metadata` value nested so that the deepest value sits at `depth` (data is 1)."""
    value: Any = "leaf"
    for _ in range(depth - 2):
        value = {"a": value}
    return {"metadata": value}


def reason_of(check: Any) -> str:
    with pytest.raises(InvalidEventError) as caught:
        check()
    return caught.value.reason


def test_a_record_at_the_size_limit_passes_and_one_byte_more_is_record_too_large() -> None:
    """The size counts key, value and headers together, and the limit itself is allowed."""
    limits = Limits(max_record_bytes=100)
    exact = record(b"v" * 80, headers=(("h", b"x" * 14),), key=b"cus_1")
    assert record_bytes(exact) == 100
    limits.check_record(exact)
    over = record(b"v" * 81, headers=(("h", b"x" * 14),), key=b"cus_1")
    assert reason_of(lambda: limits.check_record(over)) == "record_too_large"


def test_a_header_flood_counts_against_the_record_size() -> None:
    """Ten thousand headers on a small value are as heavy as a large value."""
    flood = tuple((f"h{i}", b"v" * 200) for i in range(10_000))
    assert reason_of(lambda: LIMITS.check_record(record(b"{}", headers=flood))) == (
        "record_too_large"
    )


def test_a_ten_megabyte_value_is_refused_by_the_default_limit() -> None:
    """The default limit (1 MiB, Kafka's own default) refuses a 10 MB value before decoding."""
    assert reason_of(lambda: LIMITS.check_record(record(b" " * 10_000_000))) == "record_too_large"


def test_nesting_at_the_limit_passes_and_one_level_deeper_is_too_deep() -> None:
    """`data` is level 1; a value at exactly max_nesting_depth is allowed."""
    LIMITS.check_event(event(nested(MAX_NESTING_DEPTH)))
    assert reason_of(lambda: LIMITS.check_event(event(nested(MAX_NESTING_DEPTH + 1)))) == (
        "too_deep"
    )


def test_nesting_near_the_decoders_limit_is_measured_without_recursion() -> None:
    """A document 900 levels deep (the decoder still takes it) is refused, not a RecursionError."""
    deep = "[" * 900 + "]" * 900
    value = '{"specversion":"1.0","id":"e","source":"s","type":"customer.updated",'
    value += f'"subject":"cus_1","data":{{"metadata":{{"x":{deep}}}}}}}'
    parsed = parse_record(record(value.encode()))
    with pytest.raises(InvalidEventError) as caught:
        LIMITS.check_event(parsed)
    assert caught.value.reason == "too_deep"
    assert len(caught.value.detail) < 300


def test_arrays_count_as_nesting_too() -> None:
    """Lists nest like objects do."""
    value: Any = 1
    for _ in range(MAX_NESTING_DEPTH):
        value = [value]
    assert reason_of(lambda: LIMITS.check_event(event({"metadata": {"x": value}}))) == "too_deep"


def test_a_string_over_the_field_limit_is_field_too_long_and_names_its_path() -> None:
    """The detail names where the long string is, not what it holds."""
    limits = Limits(max_field_chars=10)
    limits.check_event(event({"name": "x" * 10}))
    with pytest.raises(InvalidEventError) as caught:
        limits.check_event(event({"metadata": {"notes": "x" * 11}}))
    assert caught.value.reason == "field_too_long"
    assert "data.metadata.notes" in caught.value.detail
    assert "xxxxxxxxxxx" not in caught.value.detail


def test_an_absurdly_long_key_inside_data_is_field_too_long() -> None:
    """Object keys are strings too: a megabyte key is refused, and the detail stays short."""
    limits = Limits(max_field_chars=100)
    with pytest.raises(InvalidEventError) as caught:
        limits.check_event(event({"metadata": {"k" * 1_000_000: 1}}))
    assert caught.value.reason == "field_too_long"
    assert len(caught.value.detail) < 300


def test_a_huge_array_of_small_values_within_the_size_limit_passes() -> None:
    """Width is bounded by the record size, not by the depth or field checks."""
    LIMITS.check_event(event({"metadata": {"ids": list(range(100_000))}}))


def test_a_sequence_far_ahead_of_the_entitys_history_is_implausible() -> None:
    """2^63-1 after a real history would freeze the entity: it is refused instead."""
    assert reason_of(lambda: LIMITS.check_sequence(event({}, sequence=2**63 - 1), 41)) == (
        "sequence_implausible"
    )


def test_a_jump_of_exactly_the_bound_passes() -> None:
    """The bound itself is a plausible jump."""
    LIMITS.check_sequence(event({}, sequence=41 + MAX_SEQUENCE_JUMP), 41)
    assert reason_of(
        lambda: LIMITS.check_sequence(event({}, sequence=42 + MAX_SEQUENCE_JUMP), 41)
    ) == ("sequence_implausible")


def test_a_first_sequence_may_be_a_nanosecond_timestamp_but_not_the_maximum() -> None:
    """Without history, real timestamps pass and values above MAX_FIRST_SEQUENCE do not."""
    LIMITS.check_sequence(event({}, sequence=1_764_547_200_000_000_000), None)
    assert reason_of(
        lambda: LIMITS.check_sequence(event({}, sequence=MAX_FIRST_SEQUENCE + 1), None)
    ) == ("sequence_implausible")


def test_the_operator_header_accepts_an_implausible_sequence() -> None:
    """`dead-letters retry --accept-sequence` marks the record; the bound then steps aside."""
    accepted = event({}, sequence=2**63 - 1, headers=((ACCEPT_SEQUENCE_HEADER, b"1"),))
    LIMITS.check_sequence(accepted, 41)


def test_an_event_without_sequence_is_never_implausible() -> None:
    """No sequence, nothing to bound."""
    LIMITS.check_sequence(event({}), 10**18)


def test_a_number_beyond_double_range_is_an_invalid_field() -> None:
    """1e400 decodes to infinity, which no JSON request body can carry."""
    value = b'{"specversion":"1.0","id":"e","source":"s","type":"customer.updated",'
    value += b'"subject":"cus_1","data":{"mrr":1e400}}'
    with pytest.raises(InvalidEventError) as caught:
        LIMITS.check_event(parse_record(record(value)))
    assert caught.value.reason == "invalid_field"
    assert "data.mrr" in caught.value.detail


def test_a_lone_surrogate_in_a_value_or_a_key_is_an_invalid_field() -> None:
    """A lone surrogate decodes but has no UTF-8 form: refused before a request is built."""
    for data in (b'{"name":"a\\ud800b"}', b'{"metadata":{"\\udfff":1}}'):
        value = b'{"specversion":"1.0","id":"e","source":"s","type":"customer.updated",'
        value += b'"subject":"cus_1","data":' + data + b"}"
        assert reason_of(lambda v=value: LIMITS.check_event(parse_record(record(v)))) == (
            "invalid_field"
        )


def test_a_surrogate_pair_rtl_and_zero_width_characters_pass() -> None:
    """Real Unicode is data, however odd it looks: an emoji, Arabic, a zero-width joiner."""
    LIMITS.check_event(event({"name": "\U0001f600 \u0645\u0631\u062d\u0628\u0627 a\u200db\u202e"}))


def test_gross_nesting_is_refused_before_decoding_whatever_the_stack_depth() -> None:
    """5,000 levels never reach the decoder: too_deep, not a RecursionError or invalid_json."""
    value = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert reason_of(lambda: LIMITS.check_record(record(value))) == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Quoted brackets and escaped quotes are text, not structure."""
    assert raw_nesting_depth(b'{"a": "[[[[\\"[[[[", "b": [1]}') == 2
    assert raw_nesting_depth(b'["\\\\", [[]]]') == 3


@given(st.binary(max_size=200) | st.text(alphabet='[]{}"\\ax', max_size=200).map(str.encode))
def test_the_bracket_count_never_undercounts_the_nesting(value: bytes) -> None:
    """The cheap bound lets the exact scan be skipped only because it can never say less."""
    assert bracket_bound(value) >= raw_nesting_depth(value)


def test_the_raw_depth_limit_is_the_same_with_or_without_the_scan() -> None:
    """Exactly the allowed levels pass; one more is refused with the scan's own figure."""
    allowed = MAX_NESTING_DEPTH + ENVELOPE_LEVELS
    LIMITS.check_record(record(b"[" * allowed + b"]" * allowed))
    deeper = record(b"[" * (allowed + 1) + b"]" * (allowed + 1))
    with pytest.raises(InvalidEventError) as caught:
        LIMITS.check_record(deeper)
    assert caught.value.reason == "too_deep"
    assert f"nested {allowed + 1} levels deep" in caught.value.detail


def test_many_brackets_inside_strings_still_pass_the_raw_depth_check() -> None:
    """Over the bracket count but shallow: the exact scan decides, and lets it through."""
    value = json.dumps({"data": {"notes": "[{" * 500}}).encode()
    assert bracket_bound(value) > MAX_NESTING_DEPTH + ENVELOPE_LEVELS
    LIMITS.check_record(record(value))


# Documents of fine values with a hostile one now and then: several problems in one document
# would hide each other, so each leaf is hostile with a small chance only.
_FINE_TEXTS = st.text(st.characters(codec="utf-8"), max_size=3)
_HOSTILE = st.sampled_from([math.inf, -math.inf, math.nan, "\ud800", "a\udfffb", "x" * 5, "é" * 5])
_KEYS = st.one_of(_FINE_TEXTS, _FINE_TEXTS, _FINE_TEXTS, st.sampled_from(["\udfff", "k" * 5]))
_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _FINE_TEXTS
_VALUES = st.recursive(
    _LEAVES | _HOSTILE,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400)
@given(fields=st.dictionaries(_KEYS, _VALUES, max_size=3), max_depth=st.integers(1, 5))
def test_the_quick_check_passes_exactly_what_the_path_naming_walk_passes(
    fields: dict[str, Any], max_depth: int
) -> None:
    """check_event names the path only after the quick check found something: the two must
    agree on every document, or a problem would pass unnamed (or a fine record be refused)."""
    limits = Limits(max_nesting_depth=max_depth, max_field_chars=4)
    try:
        limits._refuse(fields)
        refused = False
    except InvalidEventError:
        refused = True
    assert _within(fields, max_depth, 4) is not refused


@st.composite
def one_hostile_value_anywhere(draw: st.DrawFn) -> dict[str, Any]:
    """A document of fine values, nested at most 4 deep, with one hostile value (or key) put
    into one of its containers."""
    fine = st.recursive(
        _LEAVES,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FINE_TEXTS, inner, max_size=3),
        max_leaves=8,
    )
    fields: dict[str, Any] = draw(st.dictionaries(_FINE_TEXTS, fine, max_size=3))
    container: Any = fields
    while draw(st.booleans()):
        inside = container.values() if isinstance(container, dict) else container
        nested = [value for value in inside if isinstance(value, dict | list)]
        if not nested:
            break
        container = draw(st.sampled_from(nested))
    hostile = draw(_HOSTILE)
    if isinstance(container, list):
        container.insert(draw(st.integers(0, len(container))), hostile)
    elif isinstance(hostile, str) and draw(st.booleans()):
        container[hostile] = 1
    else:
        container[draw(_FINE_TEXTS)] = hostile
    return fields


@settings(max_examples=300)
@given(one_hostile_value_anywhere())
def test_one_hostile_value_anywhere_is_refused(fields: dict[str, Any]) -> None:
    """Infinity, a lone surrogate or an over-long string (or key), wherever it sits."""
    with pytest.raises(InvalidEventError):
        Limits(max_field_chars=4).check_event(event_with(fields))
