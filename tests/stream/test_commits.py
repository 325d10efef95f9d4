"""The commit-offset rule that makes replays rebuild the same tracks (pure logic)."""

from __future__ import annotations

from worker.stream.commits import PartitionCheckpoints


def deliver_and_finish(checkpoints: PartitionCheckpoints, offsets) -> None:
    for offset in offsets:
        checkpoints.delivered(offset)
    for offset in offsets:
        checkpoints.done(offset)


def test_nothing_delivered_nothing_to_commit():
    assert PartitionCheckpoints(interval=100).safe_offset() is None


def test_commit_follows_the_done_prefix():
    cp = PartitionCheckpoints(interval=100)
    for offset in range(5):
        cp.delivered(offset)
    cp.done(0)
    cp.done(1)
    cp.done(3)  # out of order: 2 is still in flight
    assert cp.safe_offset() == 2
    cp.done(2)
    cp.done(4)
    assert cp.safe_offset() == 5


def test_open_track_holds_the_commit_at_its_birth():
    cp = PartitionCheckpoints(interval=100)
    deliver_and_finish(cp, range(10))
    cp.track_born("cam/a", 3)
    assert cp.safe_offset() == 3
    cp.track_closed("cam/a", 7)
    assert cp.safe_offset() == 10


def test_commit_never_lands_inside_a_closed_track():
    cp = PartitionCheckpoints(interval=100)
    for offset in range(10):
        cp.delivered(offset)
    for offset in range(6):
        cp.done(offset)
    cp.track_born("cam/a", 1)
    cp.track_closed("cam/a", 4)
    cp.track_born("cam/b", 3)
    cp.track_closed("cam/b", 8)  # b spans 3..8, and a spans 1..4: the only safe points are <= 1
    assert cp.safe_offset() == 1


def test_no_commit_backwards_and_spans_pruned():
    cp = PartitionCheckpoints(interval=100)
    deliver_and_finish(cp, range(4))
    assert cp.safe_offset() == 4
    cp.mark_committed(4)
    assert cp.safe_offset() is None
    cp.track_born("cam/a", 4)
    deliver_and_finish(cp, range(4, 8))
    assert cp.safe_offset() is None  # held at 4 by the open track, already committed
    cp.track_closed("cam/a", 6)
    assert cp.safe_offset() == 8
    cp.mark_committed(8)
    assert cp._closed == []


def test_boundaries_depend_only_on_offsets():
    cp = PartitionCheckpoints(interval=50)
    assert cp.boundary_before(None, 120) is None
    assert cp.boundary_before(99, 100) == 100
    assert cp.boundary_before(90, 130) == 100
    assert cp.boundary_before(100, 130) is None
    assert PartitionCheckpoints(interval=0).boundary_before(1, 1000) is None
