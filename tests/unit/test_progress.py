"""Progress: the Kafka commit position never passes an offset that is not finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.progress import COMPACT_AFTER, MAX_GAP, Progress

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


def test_pending_ignores_gaps_and_repeated_finishes() -> None:
    progress = Progress()
    progress.track_many(*TP, [2, 5, 6, 40])
    progress.track(*TP, 41)
    assert progress.pending(TP) == 5
    assert progress.finish(*TP, 3) is False, "a gap was never tracked"
    assert progress.finish(*TP, 5) is True
    assert progress.finish(*TP, 5) is False
    assert progress.pending(TP) == 4
    for offset in (2, 6, 40, 41):
        progress.finish(*TP, offset)
    assert progress.pending(TP) == 0
    assert progress.committable() == {TP: 42}


def flags(progress: Progress) -> bytearray:
    """The partition's flags across its segments (one byte per offset): what memory grows with."""
    return bytearray().join(segment.flags for segment in progress._partitions[TP].segments)


def segments(progress: Progress) -> int:
    return len(progress._partitions[TP].segments)


def test_a_pending_offset_costs_about_one_byte() -> None:
    progress = Progress()
    for start in range(0, 100_000, 500):
        progress.track_many(*TP, range(start, start + 500))
    assert len(flags(progress)) <= 100_000 + 16
    assert progress.pending(TP) == 100_000


def test_the_finished_prefix_is_dropped_so_memory_follows_progress() -> None:
    progress = tracked(*range(3 * COMPACT_AFTER))
    for offset in range(2 * COMPACT_AFTER):
        progress.finish(*TP, offset)
    # Of the 3 × COMPACT_AFTER bytes, a finished prefix no longer than the pending rest is left.
    assert len(flags(progress)) <= 2 * COMPACT_AFTER
    assert progress.committable() == {TP: 2 * COMPACT_AFTER}
    assert progress.finish(*TP, 5) is False, "a dropped offset is finished, not tracked again"
    assert progress.pending(TP) == COMPACT_AFTER
    progress.track(*TP, 10 * COMPACT_AFTER)
    assert progress.committable() == {TP: 2 * COMPACT_AFTER}


def test_a_gap_costs_nothing_when_everything_before_it_is_finished() -> None:
    """Compacted topics can skip billions of offsets; the array starts afresh after the gap."""
    progress = tracked(0)
    progress.finish(*TP, 0)
    progress.track(*TP, 10**12)
    assert len(flags(progress)) == 1
    assert progress.committable() == {TP: 10**12}


def test_a_gap_behind_a_pending_offset_is_held_only_until_that_offset_finishes() -> None:
    """A gap up to MAX_GAP is filled: one byte per skipped offset, but not for long."""
    assert 10 * COMPACT_AFTER <= MAX_GAP
    progress = tracked(0, 10 * COMPACT_AFTER)
    assert len(flags(progress)) == 10 * COMPACT_AFTER + 1
    progress.finish(*TP, 0)
    assert len(flags(progress)) == 1
    assert progress.committable() == {TP: 10 * COMPACT_AFTER}


def test_a_gap_longer_than_max_gap_behind_a_pending_offset_costs_a_segment_not_bytes() -> None:
    """Compacted topics can skip billions of offsets while an earlier one is still pending."""
    progress = tracked(0, 10**12)
    assert len(flags(progress)) <= 2
    assert segments(progress) == 2
    assert progress.committable() == {TP: 0}
    assert progress.finish(*TP, 10**6) is False, "an offset in the gap was never tracked"
    progress.finish(*TP, 0)
    assert progress.committable() == {TP: 10**12}
    progress.finish(*TP, 10**12)
    assert progress.committable() == {TP: 10**12 + 1}
    assert len(flags(progress)) == 0


def test_a_batch_with_a_long_gap_is_split_into_segments() -> None:
    progress = Progress()
    progress.track_many(*TP, [0, 2, 10**12, 10**12 + 1, 2 * 10**12])
    assert len(flags(progress)) <= 6
    assert segments(progress) == 3
    assert progress.pending(TP) == 5
    assert progress.finish(*TP, 10**12 + 1) is True
    assert progress.committable() == {TP: 0}


def test_a_later_segment_that_finishes_first_is_dropped_and_its_gap_is_skipped() -> None:
    far = 10 * MAX_GAP
    progress = tracked(0, far, 2 * far)
    progress.finish(*TP, far)
    assert segments(progress) == 2
    assert progress.committable() == {TP: 0}
    progress.finish(*TP, 0)
    assert progress.committable() == {TP: 2 * far}
    progress.track(*TP, 2 * far + MAX_GAP + 1)
    assert len(flags(progress)) == MAX_GAP + 2, "a gap of MAX_GAP offsets is still filled"
    assert segments(progress) == 1


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


@dataclass
class Reference:
    """The commit position by its definition, with no care for memory."""

    tracked: list[int] = field(default_factory=list)
    unfinished: set[int] = field(default_factory=set)
    committed: int | None = None

    def committable(self) -> dict[tuple[str, int], int]:
        if not self.tracked:
            return {}
        position = min(self.unfinished) if self.unfinished else self.tracked[-1] + 1
        if self.committed is not None and position <= self.committed:
            return {}
        return {TP: position}


# Mostly adjacent offsets, some gaps of a transaction marker, a few long compacted stretches.
steps = st.one_of(st.just(1), st.integers(2, 3), st.integers(4, 3 * COMPACT_AFTER))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([1, 3, COMPACT_AFTER]), st.sampled_from([0, 5, MAX_GAP]))
def test_any_sequence_of_calls_agrees_with_the_reference(
    data: st.DataObject, compact_after: int, max_gap: int
) -> None:
    """Tracks with gaps, batches, finishes of anything, commits and revokes, in any order.

    With `MAX_GAP` patched small, most gaps are longer than it and start new segments.
    """
    progress, reference = Progress(), Reference()
    with (
        patch("daemon.progress.COMPACT_AFTER", compact_after),
        patch("daemon.progress.MAX_GAP", max_gap),
    ):
        for _ in range(data.draw(st.integers(1, 60), label="calls")):
            call = data.draw(st.sampled_from(["track", "track_many", "finish", "commit", "forget"]))
            start = reference.tracked[-1] if reference.tracked else data.draw(st.integers(-1, 9))
            if call == "track":
                offset = start + data.draw(steps)
                progress.track(*TP, offset)
                reference.tracked.append(offset)
                reference.unfinished.add(offset)
            elif call == "track_many":
                offsets = [start + sum(gaps) for gaps in _prefixes(data.draw(st.lists(steps)))]
                progress.track_many(*TP, offsets)
                reference.tracked += offsets
                reference.unfinished.update(offsets)
            elif call == "finish":
                near = [o + d for o in reference.tracked[-5:] or [0] for d in (-1, 0, 1)]
                candidates = sorted(reference.unfinished) + near
                offset = data.draw(st.sampled_from(candidates), label="finish")
                expected = offset in reference.unfinished
                assert progress.finish(*TP, offset) is expected
                reference.unfinished.discard(offset)
            elif call == "commit":
                positions = progress.committable()
                if data.draw(st.booleans(), label="commit succeeds"):
                    progress.mark_committed(positions)
                    if TP in positions:
                        reference.committed = max(positions[TP], reference.committed or 0)
            else:
                progress.forget([TP])
                reference = Reference()
            assert progress.committable() == reference.committable()
            assert progress.pending(TP) == len(reference.unfinished)
            assert progress.partitions == ([TP] if reference.tracked else [])
            if reference.tracked:
                # No segment is kept with nothing unfinished, and no gap over MAX_GAP is filled.
                kept = progress._partitions[TP].segments
                assert all(segment.unfinished for segment in kept)
                assert len(flags(progress)) <= len(reference.tracked) * (max_gap + 1)


def _prefixes(gaps: list[int]) -> list[list[int]]:
    return [gaps[: i + 1] for i in range(len(gaps))]
