"""Progress: the Kafka commit position never passes an offset that is not finished."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.progress import Progress

TP = ("crm", 0)


def tracked(*offsets: int) -> Progress:
    progress = Progress()
    for offset in offsets:
        progress.track(*TP, offset)
    return progress


def test_nothing_is_committable_before_anything_is_tracked() -> None:
    assert Progress().committable() == {}


def test_the_position_is_the_lowest_unfinished_offset() -> None:
    progress = tracked(10, 11, 12)
    progress.finish(*TP, 11)
    assert progress.committable() == {TP: 10}
    progress.finish(*TP, 10)
    assert progress.committable() == {TP: 12}


def test_when_everything_is_finished_the_position_is_the_next_offset_to_read() -> None:
    progress = tracked(10, 11)
    progress.finish(*TP, 11)
    progress.finish(*TP, 10)
    assert progress.committable() == {TP: 12}


def test_gaps_between_offsets_are_skipped() -> None:
    progress = tracked(3, 7, 20)
    progress.finish(*TP, 3)
    assert progress.committable() == {TP: 7}
    progress.finish(*TP, 7)
    progress.finish(*TP, 20)
    assert progress.committable() == {TP: 21}


def test_a_position_is_committable_only_when_it_advanced_since_the_last_commit() -> None:
    progress = tracked(0, 1)
    progress.finish(*TP, 0)
    positions = progress.committable()
    progress.mark_committed(positions)
    assert progress.committable() == {}
    progress.track(*TP, 2)
    assert progress.committable() == {}, "a newly tracked offset does not move the position"
    progress.finish(*TP, 1)
    assert progress.committable() == {TP: 2}


def test_partitions_advance_independently() -> None:
    progress = Progress()
    progress.track("crm", 0, 5)
    progress.track("crm", 1, 5)
    progress.finish("crm", 1, 5)
    progress.mark_committed(progress.committable())
    progress.finish("crm", 0, 5)
    assert progress.committable() == {("crm", 0): 6}


def test_forget_drops_a_revoked_partition_and_ignores_its_late_finishes() -> None:
    progress = tracked(1, 2)
    progress.forget([TP])
    assert progress.committable() == {}
    assert progress.finish(*TP, 1) is False
    assert progress.pending(TP) == 0
    assert progress.partitions == []


def test_a_reassigned_partition_starts_afresh_after_forget() -> None:
    progress = tracked(100)
    progress.forget([TP])
    progress.track(*TP, 50)
    assert progress.committable() == {TP: 50}


def test_finishing_an_untracked_or_finished_offset_changes_nothing() -> None:
    progress = tracked(4, 5)
    assert progress.finish(*TP, 9) is False
    assert progress.finish(*TP, 5) is True
    assert progress.finish(*TP, 5) is False
    assert progress.pending(TP) == 1


def test_tracking_an_offset_below_a_tracked_one_is_an_error() -> None:
    progress = tracked(4)
    with pytest.raises(ValueError, match="out of order"):
        progress.track(*TP, 4)


def test_pending_counts_tracked_offsets_not_yet_finished() -> None:
    progress = tracked(*range(5))
    progress.finish(*TP, 3)
    assert progress.pending(TP) == 4
    assert progress.pending(("other", 0)) == 0


def test_two_hundred_thousand_outstanding_offsets_finish_in_reverse_quickly() -> None:
    progress = tracked(*range(200_000))
    for offset in reversed(range(1, 200_000)):
        progress.finish(*TP, offset)
    assert progress.committable() == {TP: 0}
    progress.finish(*TP, 0)
    assert progress.committable() == {TP: 200_000}


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(st.integers(1, 3), min_size=1, max_size=40))
def test_the_commit_position_never_passes_an_unfinished_offset(
    data: st.DataObject, gaps: list[int]
) -> None:
    offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    progress = Progress()
    unfinished: set[int] = set()
    committed = -1
    for offset in offsets:
        progress.track(*TP, offset)
        unfinished.add(offset)
        while unfinished:
            if not data.draw(st.booleans(), label="finish one more"):
                break
            done = data.draw(st.sampled_from(sorted(unfinished)))
            progress.finish(*TP, done)
            unfinished.remove(done)
        positions = progress.committable()
        if TP in positions:
            position = positions[TP]
            assert position > committed, "only an advance is reported"
            assert all(o >= position for o in unfinished), "nothing unfinished below the position"
            assert position == (min(unfinished) if unfinished else offset + 1), (
                "and it is the highest safe one"
            )
            if data.draw(st.booleans()):
                progress.mark_committed(positions)
                committed = position
    for offset in sorted(unfinished):
        progress.finish(*TP, offset)
    assert progress.committable().get(TP, committed) == offsets[-1] + 1


def test_a_batch_tracked_at_once_is_the_same_as_tracking_each_offset() -> None:
    """track_many leaves the same positions as one track per offset."""
    one, many = tracked(3, 7), Progress()
    many.track_many(*TP, [3, 7])
    for progress in (one, many):
        progress.track_many(*TP, [8, 12])
        progress.finish(*TP, 3)
        progress.finish(*TP, 8)
    assert one.committable() == many.committable() == {TP: 7}
    assert many.pending(TP) == 2


@pytest.mark.parametrize("offsets", [[4, 6], [9, 8], [10, 10]])
def test_a_batch_out_of_order_or_behind_what_was_tracked_is_refused(offsets: list[int]) -> None:
    """A batch must start past the last tracked offset and increase throughout."""
    progress = tracked(5)
    with pytest.raises(ValueError, match="out of order"):
        progress.track_many(*TP, offsets)
    assert progress.pending(TP) == 1
