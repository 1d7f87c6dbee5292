"""No record, however malformed, makes a format raise anything but InvalidEventError: a bad
record must become a dead letter, never a crash of the intake (property-tested)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidEventError
from daemon.events import INVALID_EVENT_REASONS, RecordRef
from daemon.formats import SKIP_REASONS, Skip
from daemon.formats.mapping import parse_mapping

MAPPING = parse_mapping(
    """
topics:
  dbz:
    format: debezium
    kind: contact
    id: id
    customer: account
    sequence: source.version
    skip_when: ["hidden"]
    fields:
      name: {from: name, transform: [trim]}
      email: {from: email, transform: [lowercase]}
      is_primary: primary
  ce:
    format: cloudevents
    kind: onboarding
    id: data.id
    customer: data.account
    delete_when: "type == 'gone'"
    fields:
      phase: data.phase
      name: {from: data.name, default: unnamed}
""",
    "hostile.yaml",
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
row = st.dictionaries(
    st.sampled_from(["id", "account", "name", "email", "primary", "hidden", "x"]),
    json_values,
    max_size=6,
)


def debezium_documents() -> st.SearchStrategy[Any]:
    payload = st.fixed_dictionaries(
        {"op": st.sampled_from(["c", "r", "u", "d", "t", None, 3])},
        optional={
            "before": st.none() | row,
            "after": st.none() | row,
            "source": st.dictionaries(
                st.sampled_from(["lsn", "file", "pos", "scn", "ts_ms", "version"]), json_values
            ),
        },
    )
    enveloped = st.fixed_dictionaries({"schema": json_values, "payload": st.none() | payload})
    return payload | enveloped | json_values


def outcome(record: RecordRef) -> None:
    """Decoding ends in an event, a skip with a known reason, or a known dead-letter reason."""
    reason = None
    try:
        decoded = MAPPING.decode(record)
    except InvalidEventError as error:
        reason = error.reason
    if reason is not None:
        assert reason in INVALID_EVENT_REASONS
    elif isinstance(decoded, Skip):
        assert decoded.reason in SKIP_REASONS


@settings(max_examples=200, deadline=None)
@given(debezium_documents())
def test_any_json_on_a_debezium_topic_is_an_event_a_skip_or_a_dead_letter(document: Any) -> None:
    """Whatever JSON arrives on a Debezium topic, decoding ends in one of the three outcomes."""
    value = json.dumps(document).encode()
    outcome(RecordRef(topic="dbz", partition=0, offset=0, key=None, value=value))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["specversion", "id", "source", "type", "data", "sequence"]),
        json_values,
    ),
    st.lists(st.tuples(st.sampled_from(["ce_id", "ce_type", "content-type", "ce_x"]), st.binary())),
)
def test_any_cloudevent_shape_or_headers_is_an_event_a_skip_or_a_dead_letter(
    document: dict[str, Any], headers: list[tuple[str, bytes]]
) -> None:
    """Structured or binary, well-formed or not: never an exception other than a dead letter."""
    value = json.dumps(document).encode()
    for topic in ("ce", "builtin"):
        outcome(
            RecordRef(
                topic=topic, partition=0, offset=0, key=b"k", value=value, headers=tuple(headers)
            )
        )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_an_event_a_skip_or_a_dead_letter(value: bytes) -> None:
    """Bytes that are not even JSON are refused with a reason on every kind of topic."""
    for topic in ("dbz", "ce", "builtin"):
        outcome(RecordRef(topic=topic, partition=0, offset=0, key=None, value=value))
