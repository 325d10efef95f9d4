"""The lane's two stages driven one call at a time, without threads."""

from __future__ import annotations

from concurrent.futures import Future

from tests.stream.doubles import (
    ListSink,
    PlannedWatchlist,
    chips_by_position,
    frame_image,
    identified,
    planned_detect,
)
from worker.config import PipelineConfig, TrackingConfig
from worker.obs.metrics import Metrics
from worker.stream.commits import Commits, KafkaCommits
from worker.stream.decisions import DecisionRules
from worker.stream.events import FaceMatch, TrackEnded, TrackStarted, TrackUpdated, VisitStarted, timestamp
from worker.stream.frames import Frame, KafkaPosition
from worker.stream.stages import DecideStage, FaceStage, FaceWork, scaled_detect
from worker.stream.visitors import VisitorTrack


def _stages(commits: Commits | None = None, detect_every: int = 1, rules: DecisionRules | None = None):
    watchlist = PlannedWatchlist()
    metrics = Metrics()
    faces = FaceStage(
        planned_detect,
        chips_by_position,
        lambda chips: identified(watchlist.identify, chips),
        PipelineConfig(detect_every=detect_every),
        TrackingConfig(correlation=False, max_age_s=1.0),
        commits or Commits(),
        metrics,
    )
    sink = ListSink(metrics)
    decide = DecideStage(rules or DecisionRules(min_faces=2, cooldown_s=0), "model", 1, [sink], metrics)
    return watchlist, faces, decide, sink


def test_faces_are_tracked_embedded_and_announced_once():
    _, faces, decide, sink = _stages()
    for seq in range(4):
        decide.decide(faces.process(Frame("cam", seq, 100.0 + seq * 0.1, frame_image(2))))
    matches = [e for e in sink.events if isinstance(e, FaceMatch)]
    assert sorted(e.identity_id for e in matches) == ["id-0", "id-1"]  # one per track, at the second face
    assert all(e.faces == 2 for e in matches)
    decide.decide(faces.end_camera("cam", "end_of_stream"))
    ended = [e for e in sink.events if isinstance(e, TrackEnded)]
    assert sorted(e.identity_id for e in ended) == ["id-0", "id-1"] and {e.reason for e in ended} == {"end_of_stream"}
    assert all(e.faces == 4 for e in ended)


def test_tracks_are_announced_at_birth_and_updated_at_most_once_per_interval():
    _, faces, decide, sink = _stages(detect_every=3, rules=DecisionRules(min_faces=2, update_interval_s=0.2))
    for seq in range(7):  # detections on frames 0, 3 and 6 (no correlation tracking: nothing in between)
        decide.decide(faces.process(Frame("cam", seq, 100.0 + seq * 0.1, frame_image(1))))
    started = [e for e in sink.events if isinstance(e, TrackStarted)]
    updates = [e for e in sink.events if isinstance(e, TrackUpdated)]
    assert [(e.frame_seq, e.frame_width, e.frame_height) for e in started] == [(0, 320, 240)]
    assert sink.events[0] is started[0]
    # At least 0.2 s of frame time apart; frame 3 completes the decision (two faces), then says so.
    assert [(e.frame_seq, e.identity_id, e.faces) for e in updates] == [(3, "id-0", 2), (6, "id-0", 3)]
    assert [e.type for e in sink.events[:3]] == ["track_started", "face_match", "track_updated"]
    assert all(e.track_id == started[0].track_id for e in updates)


def test_detect_every_n_frames_follows_in_between():
    _, faces, _, _ = _stages(detect_every=3)
    works = [faces.process(Frame("cam", seq, 100.0 + seq * 0.04, frame_image(1))) for seq in range(6)]
    assert [w.embeddings is not None for w in works] == [True, False, False, True, False, False]
    assert [len(w.born) for w in works] == [1, 0, 0, 0, 0, 0]


def test_a_lost_track_ends_and_a_stale_camera_is_closed():
    _, faces, decide, _sink = _stages()
    decide.decide(faces.process(Frame("a", 0, 100.0, frame_image(1))))
    work = faces.process(Frame("a", 1, 102.0, frame_image(0)))  # 2 s without a detection: max_age 1 s
    assert [e.reason for e in work.ended] == ["lost"]
    faces.process(Frame("b", 0, 100.0, frame_image(1)))
    assert faces.end_stale(60.0) == []
    (stale,) = faces.end_stale(0.0)  # camera a has no open track left; b does
    assert stale.camera_id == "b" and [e.reason for e in stale.ended] == ["lost"]
    assert faces.end_all("shutdown") == []


def test_checkpoint_boundary_closes_tracks_and_commit_steps_are_recorded():
    commits = KafkaCommits(interval=10)
    commits.assigned([("frames", 0)])
    _, faces, decide, _sink = _stages(commits)
    for offset in (7, 8, 9, 10, 11):
        position = KafkaPosition("frames", 0, offset)
        commits.delivered(position)
        frame = Frame("cam", offset, 100.0 + offset * 0.1, frame_image(1), position=position)
        work = faces.process(frame)
        if offset == 10:
            assert [(e.reason, e.end_offset) for e in work.ended] == [("checkpoint", 9)]
        decide.decide(work)
    checkpoints = commits.partition(KafkaPosition("frames", 0, 0))
    # The track born at 10 is still open: a restart must replay from 10 to rebuild it.
    assert checkpoints.safe_offset() == 10


def test_erasure_reaches_the_decision_state_and_later_events_carry_the_new_version():
    watchlist, faces, decide, sink = _stages(rules=DecisionRules(min_faces=3, cooldown_s=0))
    decide.decide(faces.process(Frame("cam", 0, 100.0, frame_image(1))))
    decide.decide(faces.process(Frame("cam", 1, 100.1, frame_image(1))))
    version = watchlist.erase("id-0")
    decide.watchlist_changed(version, ["id-0"])
    decide.decide(faces.process(Frame("cam", 2, 100.2, frame_image(1))))
    (ended,) = decide.decide(faces.end_camera("cam", "end_of_stream"))
    assert not [e for e in sink.events if isinstance(e, FaceMatch)]
    assert ended.identity_id is None and ended.watchlist_version == version


def test_a_failed_decision_still_counts_the_frame_as_done():
    commits = KafkaCommits(interval=0)
    commits.assigned([("frames", 0)])
    _, _faces, decide, _ = _stages(commits)
    position = KafkaPosition("frames", 0, 0)
    checkpoints = commits.delivered(position)
    work = FaceWork("cam", Frame("cam", 0, 100.0, frame_image(0), position=position), checkpoints=checkpoints)
    decide.frame_failed(work)
    assert checkpoints.safe_offset() == 1


def test_scaled_detect_maps_boxes_back_to_the_full_frame():
    detect = scaled_detect(lambda image: planned_detect(image) if image.shape[1] == 160 else [], 0.5)
    image = frame_image(0, 320, 240)
    image[:2, :2, 0] = 1  # survives the halving: one face planned on the small image
    (box,) = detect(image)
    assert (box.left, box.top, box.right, box.bottom) == (20, 100, 99, 179)


def test_faces_too_poor_to_vote_are_tracked_but_never_embedded():
    submitted: list[int] = []
    watchlist = PlannedWatchlist()
    metrics = Metrics()
    rules = DecisionRules(min_faces=1, min_face_size=50)  # the planned faces are 40 px wide

    def submit(chips):
        submitted.append(len(chips))
        return identified(watchlist.identify, chips)

    faces = FaceStage(
        planned_detect,
        chips_by_position,
        submit,
        PipelineConfig(detect_every=1),
        TrackingConfig(correlation=False),
        Commits(),
        metrics,
        can_vote=rules.can_vote,
    )
    sink = ListSink(metrics)
    decide = DecideStage(rules, "model", 1, [sink], metrics)
    for seq in range(3):
        decide.decide(faces.process(Frame("cam", seq, 100.0 + seq * 0.1, frame_image(2))))
    decide.decide(faces.end_camera("cam", "end_of_stream"))
    assert submitted == []
    ended = [e for e in sink.events if isinstance(e, TrackEnded)]
    assert [(e.faces, e.faces_voted, e.identity_id) for e in ended] == [(3, 0, None), (3, 0, None)]


def test_tracks_closed_by_a_camera_end_release_the_partition_commits():
    # Camera a's track is born at offset 0; camera b then sends frames on the same partition.
    commits = KafkaCommits(interval=0)
    commits.assigned([("frames", 0)])
    _, faces, decide, _ = _stages(commits)
    for offset, camera, count in ((0, "a", 1), (1, "a", 1), (2, "b", 0), (3, "b", 0)):
        position = KafkaPosition("frames", 0, offset)
        commits.delivered(position)
        decide.decide(faces.process(Frame(camera, offset, 100.0 + offset * 0.1, frame_image(count), position=position)))
    checkpoints = commits.partition(KafkaPosition("frames", 0, 0))
    assert checkpoints.safe_offset() == 0  # a's track is open: a replay must start at its birth
    decide.decide(faces.end_camera("a", "lost"))  # a went silent (stale camera, end of stream, shutdown)
    assert checkpoints.safe_offset() == 4


def test_tracks_that_end_unknown_go_to_the_visitor_stage_with_their_mean_embedding():
    watchlist = PlannedWatchlist()
    watchlist.erase("id-1")  # the second face is nobody the watchlist knows
    metrics = Metrics()
    faces = FaceStage(
        planned_detect,
        chips_by_position,
        lambda chips: identified(watchlist.identify, chips),
        PipelineConfig(detect_every=1),
        TrackingConfig(correlation=False, max_age_s=1.0),
        Commits(),
        metrics,
    )
    offered: list[VisitorTrack] = []

    def visitors(track: VisitorTrack) -> Future:
        offered.append(track)
        done: Future = Future()
        done.set_result([VisitStarted(event_id="e", camera_id="cam", zone="cam", visitor_id="v", visit_id="x",
                                      returning=False, started_at=timestamp(100.0))])  # fmt: skip
        return done

    sink = ListSink(metrics)
    decide = DecideStage(DecisionRules(min_faces=2, cooldown_s=0), "model", 1, [sink], metrics, visitors=visitors)
    for seq in range(3):
        decide.decide(faces.process(Frame("cam", seq, 100.0 + seq * 0.1, frame_image(2))))
    events = decide.decide(faces.end_camera("cam", "end_of_stream"))
    # Only the unknown track is offered; the recognised one never becomes a visitor.
    (track,) = offered
    assert (track.camera_id, track.faces, track.matched_watchlist) == ("cam", 3, False)
    assert track.embedding[0] == 1.0  # the mean of its faces' embeddings (embed_mean: the chip's fill value)
    assert [e.type for e in events] == ["track_ended", "track_ended", "visit_started"]
    assert decide._track_faces.tracks == {}  # nothing kept after the tracks ended
