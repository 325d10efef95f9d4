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


# -- the protocol ------------------------------------------------------------------------------


class _Output:
    """An output whose flush succeeds or fails as the test says, recording the order of calls."""

    def __init__(self, name: str, calls: list[str], ok: bool = True) -> None:
        self.name = name
        self.calls = calls
        self.ok = ok

    def flush(self, timeout: float = 30.0) -> bool:
        self.calls.append(f"flush {self.name}")
        return self.ok

    @property
    def healthy(self) -> bool:  # a failing output holds what it failed to deliver
        return self.ok


def _protocol(calls: list[str], sinks_ok: bool = True):
    from worker.stream.commits import KafkaCommits

    outputs = [_Output("events", calls, sinks_ok), _Output("dead-letters", calls)]
    commits = KafkaCommits(interval=100, outputs=outputs, max_failed_flushes=2)
    commits.assigned([("frames", 0), ("frames", 1)])
    return commits, outputs


def _commit_into(calls: list[str], committed: dict):
    def commit(offsets):
        calls.append("commit")
        committed.update(offsets)

    return commit


def test_outputs_are_flushed_in_order_before_the_offsets_are_committed():
    from worker.stream.frames import KafkaPosition

    calls: list[str] = []
    committed: dict = {}
    commits, _ = _protocol(calls)
    assert commits.commit(_commit_into(calls, committed)) and calls == []  # nothing delivered: nothing to do
    for offset in range(3):
        commits.delivered(KafkaPosition("frames", 0, offset)).done(offset)
    commits.delivered(KafkaPosition("frames", 1, 0))  # delivered, not done
    assert commits.commit(_commit_into(calls, committed))
    assert calls == ["flush events", "flush dead-letters", "commit"]
    assert committed == {("frames", 0): 3, ("frames", 1): 0}  # partition 1 restarts at its undone frame


def test_a_failing_flush_holds_commits_back_then_stalls_and_recovers():
    from worker.stream.frames import KafkaPosition

    calls: list[str] = []
    committed: dict = {}
    commits, (events, _) = _protocol(calls, sinks_ok=False)
    commits.delivered(KafkaPosition("frames", 0, 0)).done(0)
    assert not commits.commit(_commit_into(calls, committed)) and not commits.stalled
    assert not commits.commit(_commit_into(calls, committed)) and commits.stalled
    assert "commit" not in calls and committed == {}
    events.ok = True
    assert commits.commit(_commit_into(calls, committed)) and not commits.stalled
    assert committed == {("frames", 0): 1}


def test_a_failed_round_of_revoked_partitions_clears_once_the_outputs_deliver():
    """A broker restart: the round fails, the rebalance revokes the partition, no new frame comes. The failed
    round must not hold readiness (and liveness) until one does: the next round flushes again, owing nothing."""
    from worker.stream.frames import KafkaPosition

    calls: list[str] = []
    committed: dict = {}
    commits, (events, _) = _protocol(calls, sinks_ok=False)
    commits.delivered(KafkaPosition("frames", 0, 0)).done(0)
    assert not commits.commit(_commit_into(calls, committed)) and commits.failed_flushes == 1
    commits.revoked([("frames", 0), ("frames", 1)])
    assert commits.commit(_commit_into(calls, committed)) and commits.failed_flushes == 1  # still not delivered
    events.ok = True
    calls.clear()
    assert commits.commit(_commit_into(calls, committed)) and commits.failed_flushes == 0
    assert calls == ["flush events", "flush dead-letters"] and committed == {}  # flushed, nothing committed
    calls.clear()
    assert commits.commit(_commit_into(calls, committed)) and calls == []  # and idle rounds stay free


def test_revoked_partitions_are_forgotten_and_file_frames_have_no_partition():
    from worker.stream.commits import Commits
    from worker.stream.frames import KafkaPosition

    commits, _ = _protocol([])
    commits.revoked([("frames", 1)])
    assert commits.delivered(KafkaPosition("frames", 1, 5)) is None
    assert commits.partition(None) is None
    assert Commits().partition(KafkaPosition("frames", 0, 1)) is None and not Commits().stalled


def test_commits_failing_for_stall_after_s_stall_and_a_commit_that_goes_through_recovers():
    # Issue 16, item 2: a broker that does not answer made commit() fail forever while /healthz stayed 200.
    from worker.stream.commits import KafkaCommits
    from worker.stream.frames import KafkaPosition

    now = [1000.0]
    commits = KafkaCommits(interval=100, outputs=[], stall_after_s=30.0, clock=lambda: now[0])
    commits.assigned([("frames", 0)])
    committed: dict = {}

    def broker_away(offsets):
        raise ConnectionError("broker away")

    assert commits.commit(broker_away) and commits.behind_s == 0  # nothing owed: nothing fails
    commits.delivered(KafkaPosition("frames", 0, 0)).done(0)
    assert not commits.commit(broker_away) and not commits.stalled
    now[0] += 29.0
    assert not commits.commit(broker_away) and commits.behind_s == 29.0 and not commits.stalled
    now[0] += 1.0
    assert commits.stalled  # owed for 30 s: only a restart helps
    assert commits.commit(_commit_into([], committed)) and not commits.stalled and commits.behind_s == 0
    assert committed == {("frames", 0): 1}


def test_done_for_an_offset_not_delivered_since_a_reset_is_ignored():
    # A frame read before its partition was reset (the broker lost the log) finishes later: its offset
    # must not count as done on the new log, or a commit could pass that offset unprocessed.
    cp = PartitionCheckpoints(interval=100)
    cp.done(290)  # from the old log
    cp.delivered(0)
    cp.done(5)  # not delivered yet on the new log
    assert cp.safe_offset() == 0
    for offset in range(1, 8):
        cp.delivered(offset)
    for offset in range(5):
        cp.done(offset)
    assert cp.safe_offset() == 5  # offset 5 waits for its own done
    cp.done(5)
    assert cp.safe_offset() == 6
