"""Re-read records: the id hint, the document handed on to the full path, and the look-up that
asks Postgres once for a whole batch."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidEventError
from daemon.events import Event, RecordRef
from daemon.formats.cloudevents import load_json
from daemon.formats.mapping import MappingFile
from daemon.rereads import Checkpointed, look_up, peek


def id_hint(record: RecordRef) -> str | None:
    return peek(record).hint


def record(value: bytes | None, offset: int = 0) -> RecordRef:
    return RecordRef(topic="t", partition=0, offset=offset, key=b"k", value=value)


def test_the_hint_is_the_top_level_id_of_a_json_object() -> None:
    """A CloudEvent's `id` is its hint, whatever else the record holds or lacks."""
    value = json.dumps({"id": "evt_1", "data": {"id": "nested"}}).encode()
    assert id_hint(record(value)) == "evt_1"


@pytest.mark.parametrize(
    "value",
    [
        None,  # a tombstone
        b"{not json",
        b"\xff\xfe",
        b'["evt_1"]',
        b'{"id": 7}',
        b'{"id": ""}',
        b'{"data": {"id": "nested"}}',
        b"[" * 5000 + b"]" * 5000,  # nested past the decoder's depth
        b'{"id": "\\ud800"}',  # a lone surrogate
    ],
)
def test_anything_else_has_no_hint_and_never_raises(value: bytes | None) -> None:
    """No hint means the full path: events.py decides what is wrong, and says why."""
    assert id_hint(record(value)) is None


# -- the document handed on: exactly the stdlib decoder's, or none ------------------------------


def identical(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down, keys in the same order (1 == 1.0 == True
    in Python; a request body would tell them apart)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return bool(a.hex() == b.hex())
    return bool(a == b)


def stdlib(value: bytes) -> Any:
    try:
        return load_json(value)
    except InvalidEventError:
        return InvalidEventError


def assert_reusable_only_when_identical(value: bytes) -> None:
    document = peek(record(value)).document()
    decoded = stdlib(value)
    if decoded is InvalidEventError:
        assert document is None, "orjson accepted what the stdlib decoder refuses"
    elif document is not None:
        assert identical(document, decoded)


def outcome(value: bytes, document: dict[str, Any] | None) -> Event | tuple[str, str]:
    try:
        item = MappingFile.builtin().decode(record(value), document)
    except InvalidEventError as error:
        return (error.reason, error.detail)
    assert isinstance(item, Event)
    return item


@pytest.mark.parametrize(
    "value",
    [
        b'{"id": "e", "n": 9223372036854775807, "m": -9223372036854775808}',
        b'{"id": "e", "n": 18446744073709551616}',  # beyond 64 bits: orjson makes a float
        b'{"id": "e", "n": -9223372036854775809}',
        b'{"id": "e", "n": ' + b"9" * 5000 + b"}",  # the stdlib's digit limit
        b'{"id": "e", "x": 1e400}',  # the stdlib makes inf; orjson refuses
        b'{"id": "e", "x": 1e-400, "y": -0.0, "z": -0, "w": 4.9e-324}',
        b'{"id": "e", "x": 123456789012345678901234567890.5, "y": 0.1e1, "z": 1E+2}',
        b'{"id": "e", "x": NaN}',
        b'{"id": "e", "x": "\\ud800"}',  # a lone surrogate: the stdlib keeps it
        b'{"id": "e", "x": "\\ud83d\\ude00", "y": "\xe2\x80\xa8", "z": "\\u0000"}',
        b'{"id": "e", "a": 1, "b": 2, "a": 3}',  # a repeated key: the last wins, in place
        b'\xef\xbb\xbf{"id": "e"}',  # a byte-order mark
        b'{"id": "e", "x": "a\nb"}',  # a raw control character in a string
        b'{"id": "e", "x": [1, 2,]}',
        b'{"id": "e"} x',
        b' {"id": "e"}\r\n\t',
        b'{"id": "\xff"}',
    ],
)
def test_the_document_is_handed_on_only_where_the_stdlib_decoder_reads_the_same(
    value: bytes,
) -> None:
    """orjson and the stdlib part ways on big integers, non-finite numbers, lone surrogates and
    the like: there the full path decodes again, and refuses or accepts as it always did."""
    assert_reusable_only_when_identical(value)


def test_an_integer_beyond_64_bits_is_left_to_the_stdlib_decoder() -> None:
    value = b'{"id": "e", "n": 18446744073709551616}'
    peeked = peek(record(value))
    assert peeked.hint == "e"
    assert peeked.document() is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(fields=st.dictionaries(st.text(), json_values, max_size=5), ascii_only=st.booleans())
def test_any_json_reads_the_same_by_either_path(fields: dict[str, Any], ascii_only: bool) -> None:
    """Generated documents (big integers, NaN, lone surrogates, any text, escaped or raw)."""
    text = json.dumps({"id": "e", **fields}, ensure_ascii=ascii_only)
    assert_reusable_only_when_identical(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=400, deadline=None)
@given(
    data=st.dictionaries(st.sampled_from(["name", "status", "mrr", "metadata"]), json_values),
    cut=st.integers(min_value=0, max_value=400),
    junk=st.binary(max_size=3),
)
def test_a_cloudevent_decodes_to_the_same_event_or_refusal_either_way(
    data: dict[str, Any], cut: int, junk: bytes
) -> None:
    """The built-in contract's decode, with the handed-on document and without it, damaged
    bytes included: the same event, or the same dead-letter reason and detail."""
    event = {"specversion": "1.0", "id": "e", "source": "crm", "type": "customer.updated"}
    whole = json.dumps({**event, "subject": "c1", "data": data}).encode()
    value = whole[:cut] + junk + whole[cut:] if junk else whole
    assert_reusable_only_when_identical(value)
    assert outcome(value, peek(record(value)).document()) == outcome(value, None)


class Store:
    def __init__(self, answers: list[Checkpointed | None]) -> None:
        self.answers = answers
        self.asked: list[list[tuple[str, RecordRef]]] = []

    async def checkpoints_of(
        self, candidates: list[tuple[str, RecordRef]]
    ) -> list[Checkpointed | None]:
        self.asked.append(candidates)
        return self.answers


async def test_the_look_up_asks_once_for_the_hinted_records_and_answers_for_every_record() -> None:
    """Records without a hint are not asked about and get None, in their place."""
    records = [record(b"{}", offset) for offset in range(4)]
    hit = Checkpointed(same_record=True, entity=None)
    store = Store([hit, None])
    found = await look_up(store, records, ["a", None, "b", None])
    assert found == [hit, None, None, None]
    assert store.asked == [[("a", records[0]), ("b", records[2])]]


async def test_a_batch_without_any_hint_asks_nothing() -> None:
    """Tombstones only: no query at all."""
    store = Store([])
    assert await look_up(store, [record(None)], [None]) == [None]
    assert store.asked == []
