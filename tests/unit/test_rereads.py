"""Re-read records: the id hint, and the look-up that asks Postgres once for a whole batch."""

import json

import pytest

from daemon.events import RecordRef
from daemon.rereads import Checkpointed, id_hint, look_up


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
