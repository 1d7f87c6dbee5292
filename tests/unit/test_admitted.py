"""Admitted: the ids in the pipeline and the copies waiting on them, released as duplicates
once the original is durable, and dropped with their partition."""

from __future__ import annotations

from daemon.admitted import Admitted
from daemon.events import EntityKey, EntityKind
from daemon.outcomes import Finished, Outcome
from tests.unit.pipeline_doubles import record

CUS_1 = EntityKey(kind=EntityKind.CUSTOMER, external_id="cus_1")


def sent(offset: int, event_id: str) -> Finished:
    return Finished(
        event_id=event_id, record=record(offset, event_id), outcome=Outcome.SENT, entity=CUS_1
    )


def test_an_added_id_is_admitted_until_it_is_settled() -> None:
    """An id is in the pipeline from `add` until its outcome is settled."""
    admitted = Admitted()
    assert "evt-1" not in admitted
    admitted.add("evt-1")
    assert "evt-1" in admitted
    assert admitted.settle([sent(0, "evt-1")]) == []
    assert "evt-1" not in admitted


def test_settling_releases_every_waiting_copy_as_a_duplicate_of_the_original() -> None:
    """Each copy comes back once, as a duplicate on its own record, carrying the original's
    entity; copies of other ids keep waiting."""
    admitted = Admitted()
    admitted.add("evt-1")
    admitted.add("evt-2")
    admitted.hold_copy("evt-1", record(5, "evt-1"))
    admitted.hold_copy("evt-1", record(9, "evt-1"))
    admitted.hold_copy("evt-2", record(7, "evt-2"))

    released = admitted.settle([sent(0, "evt-1")])
    assert [(f.event_id, f.record.offset, f.outcome, f.entity) for f in released] == [
        ("evt-1", 5, Outcome.DUPLICATE, CUS_1),
        ("evt-1", 9, Outcome.DUPLICATE, CUS_1),
    ]
    assert admitted.settle([sent(0, "evt-1")]) == []  # released once only
    assert [f.record.offset for f in admitted.settle([sent(1, "evt-2")])] == [7]


def test_dropping_an_id_forgets_it_and_its_copies() -> None:
    """A revoked partition's ids leave the pipeline, and their copies are not released later."""
    admitted = Admitted()
    admitted.add("evt-1")
    admitted.hold_copy("evt-1", record(5, "evt-1"))
    admitted.drop(["evt-1", "evt-unknown"])
    assert "evt-1" not in admitted
    assert admitted.settle([sent(0, "evt-1")]) == []
