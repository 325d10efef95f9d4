"""Per-track decisions: votes, vote share, abstentions, cooldown, thumbnails, erasure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.stream.decisions import Announcement, DecisionRules, FrameRef, TrackDecisions
from worker.stream.events import event_id
from worker.stream.tracker import CameraTracker
from worker.vision.boxes import Box


def _image(width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def _box(left: int, top: int, size: int = 40) -> Box:
    return Box(left, top, left + size - 1, top + size - 1, 1.0)


def _at(time: float) -> FrameRef:
    """A 64 x 48 frame at ``time``, numbered at 10 frames per second."""
    return FrameRef(round(time * 10), 64, 48, time)


@dataclass
class _Id:
    identity_id: str | None
    name: str | None
    score: float
    distance: float
    status: str = "match"
    confidence: float = 0.99
    threshold: float = 0.5


ADA = _Id("id-ada", "Ada", 0.9, 0.3)
NOBODY = _Id(None, None, 0.2, 0.9, "unknown")
UNSURE = _Id(None, None, 0.92, 0.55, "uncertain")


def test_a_track_is_announced_once_after_min_faces():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.5, cooldown_s=60), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, _at(1.0), ADA, 1) is None  # one face is not enough
    match = decisions.observe(track, track.box, _at(1.1), ADA, 1)
    assert match is not None and match.identity_id == "id-ada" and match.faces == 2
    assert match.thumbnail_jpeg_base64 is None
    assert decisions.observe(track, track.box, _at(1.2), ADA, 1) is None  # announced once per track
    ended = decisions.ended(track, "lost", 1)
    assert ended.identity_id == "id-ada" and ended.faces == 3 and ended.reason == "lost"


def test_vote_share_and_unknown_tracks():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.6), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    for t, who in enumerate([NOBODY, ADA, NOBODY, ADA]):
        assert decisions.observe(track, track.box, _at(1.0 + t / 10), who, 1) is None  # 2 of 4 < 60 %
    ended = decisions.ended(track, "end_of_stream", 1)
    assert (ended.outcome, ended.identity_id, ended.best_score) == ("uncertain", None, 0.9)


def test_uncertain_faces_abstain():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.6), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    for t, who in enumerate([UNSURE, ADA, UNSURE, UNSURE]):
        assert decisions.observe(track, track.box, _at(1.0 + t / 10), who, 1) is None
    # 2 of 5 faces, but 2 of the 2 votes cast: announced.
    match = decisions.observe(track, track.box, _at(1.5), ADA, 1)
    assert match is not None and match.faces == 2
    assert decisions.ended(track, "lost", 1).faces == 5


def test_cooldown_per_identity_and_camera():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    tracker = CameraTracker("cam", correlation=False)
    first = tracker.detected(_image(), 100.0, [_box(1, 1)]).born[0]
    assert decisions.observe(first, first.box, _at(100.0), ADA, 1) is not None
    again = tracker.detected(_image(), 110.0, [_box(100, 1)]).born[0]
    assert decisions.observe(again, again.box, _at(110.0), ADA, 1) is None  # 10 s later: within cooldown
    late = tracker.detected(_image(), 140.0, [_box(200, 1)]).born[0]
    assert decisions.observe(late, late.box, _at(140.0), ADA, 1) is not None


def test_announcements_read_back_hold_the_identity_back_like_its_own():
    # After a restart, the announcements before the committed offset come back from the events topic.
    tracker = CameraTracker("cam", correlation=False)
    first = tracker.detected(_image(), 100.0, [_box(1, 1)]).born[0]
    again = tracker.detected(_image(), 110.0, [_box(100, 1)]).born[0]
    uninterrupted = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    announced = uninterrupted.observe(first, first.box, _at(100.0), ADA, 1)
    assert announced is not None and uninterrupted.observe(again, again.box, _at(110.0), ADA, 1) is None

    restarted = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    restarted.remember([Announcement("cam", "id-ada", 100.0, announced.event_id)])
    assert restarted.observe(again, again.box, _at(110.0), ADA, 1) is None  # as the uninterrupted run decided
    late = tracker.detected(_image(), 130.0, [_box(200, 1)]).born[0]
    assert restarted.observe(late, late.box, _at(130.0), ADA, 1) is not None  # 30 s on: the cooldown is over


def test_a_replayed_announcement_read_back_does_not_hold_itself_or_earlier_frames_back():
    # The topic may hold announcements of frames after the committed offset, published before the crash.
    tracker = CameraTracker("cam", correlation=False)
    first = tracker.detected(_image(), 100.0, [_box(1, 1)]).born[0]
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    decisions.remember(
        [
            Announcement("cam", "id-ada", 100.0, event_id("cam", first.track_id, "id-ada")),  # this very decision
            Announcement("cam", "id-ada", 105.0, "a later track's event"),  # after this frame: not its past
            Announcement("other-cam", "id-ada", 99.0, "another camera's event"),  # another camera's cooldown
        ]
    )
    match = decisions.observe(first, first.box, _at(100.0), ADA, 1)
    assert match is not None and match.event_id == event_id("cam", first.track_id, "id-ada")


def test_announcements_past_the_cooldown_are_dropped_at_the_cameras_next_decision():
    tracker = CameraTracker("cam", correlation=False)
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    decisions.remember([Announcement("cam", "id-bob", 100.0, "bob"), Announcement("cam", "id-ada", 125.0, "ada")])
    track = tracker.detected(_image(), 140.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, _at(140.0), ADA, 1) is None  # 15 s after Ada's: held back
    assert set(decisions._announced) == {"id-ada"}  # Bob's, 40 s old, can hold nothing back any more


def test_erasure_forgets_announcements_read_back():
    tracker = CameraTracker("cam", correlation=False)
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=600), "m")
    decisions.remember([Announcement("cam", "id-ada", 100.0, "earlier")])
    decisions.forget_identity("id-ada")
    track = tracker.detected(_image(), 110.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, _at(110.0), ADA, 1) is not None  # nothing of Ada is left to hold it back


def test_thumbnails_only_when_configured():
    chip = _image(150, 150)
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, thumbnails=True), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    match = decisions.observe(track, track.box, _at(1.0), ADA, 1, chip)
    assert match is not None and match.thumbnail_jpeg_base64


def test_forget_identity_erases_decision_state():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=600), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, _at(1.0), ADA, 1) is not None
    decisions.forget_identity("id-ada")
    ended = decisions.ended(track, "lost", 2)
    assert ended.identity_id is None and ended.identity_name is None


# -- quality ------------------------------------------------------------------------------------


def test_poor_faces_are_counted_but_do_not_vote():
    rules = DecisionRules(min_faces=2, min_vote_share=0.5, min_quality=0.3, min_face_size=20)
    decisions = TrackDecisions("cam", rules, "m")
    tracker = CameraTracker("cam")
    (track, box) = tracker.detected(_image(), 1.0, [_box(10, 10)]).matched[0]
    assert decisions.observe(track, box, _at(1.0), ADA, 1, quality=0.1) is None  # too poor: no vote
    assert decisions.observe(track, _box(10, 10, size=12), _at(1.1), ADA, 1, quality=0.9) is None  # too small
    assert decisions.observe(track, box, _at(1.2), ADA, 1, quality=0.8) is None  # first real vote
    event = decisions.observe(track, box, _at(1.3), ADA, 1, quality=0.8)
    assert event is not None and event.faces == 2 and event.faces_voted == 2
    ended = decisions.ended(track, "lost", 1)
    assert ended.faces == 4 and ended.faces_voted == 2


def test_votes_weigh_as_much_as_the_faces_quality():
    rules = DecisionRules(min_faces=2, min_vote_share=0.5, min_quality=0.05)
    weighted = TrackDecisions("cam", rules, "m")
    unweighted = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.5, weighted=False), "m")
    tracker = CameraTracker("cam")
    (track, box) = tracker.detected(_image(), 1.0, [_box(10, 10)]).matched[0]
    # Two blurry faces that look like Ada, three sharp ones of a stranger: Ada holds 2 of 5 faces
    # but far less than half of the weight.
    sequence = [(ADA, 0.1), (NOBODY, 0.9), (ADA, 0.1), (NOBODY, 0.9), (NOBODY, 0.9)]
    for t, (match, quality) in enumerate(sequence):
        assert weighted.observe(track, box, _at(1.0 + t), match, 1, quality=quality) is None
    results = [unweighted.observe(track, box, _at(1.0 + t), m, 1, quality=q) for t, (m, q) in enumerate(sequence[:3])]
    assert results[2] is not None  # unweighted: 2 of 3 votes are Ada's


def test_a_strangers_track_ends_unknown_with_no_similarity_to_anyone():
    # Regression: best_score used to be the stranger's similarity to the nearest enrolled person (0.2 here).
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    for t in range(3):
        assert decisions.observe(track, track.box, _at(1.0 + t / 10), NOBODY, 1) is None
    ended = decisions.ended(track, "lost", 1)
    assert (ended.outcome, ended.identity_id, ended.best_score, ended.faces_voted) == ("unknown", None, None, 3)


def test_outcomes_matched_and_uncertain():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2), "m")
    tracks = CameraTracker("cam", correlation=False).detected(_image(200, 60), 1.0, [_box(1, 1), _box(100, 1)]).born
    for t in range(2):
        decisions.observe(tracks[0], tracks[0].box, _at(1.0 + t / 10), ADA, 1)
        decisions.observe(tracks[1], tracks[1].box, _at(1.0 + t / 10), UNSURE, 1)
    matched, uncertain = (decisions.ended(track, "lost", 1) for track in tracks)
    assert (matched.outcome, matched.identity_id, matched.best_score) == ("matched", "id-ada", 0.9)
    assert (uncertain.outcome, uncertain.identity_id, uncertain.best_score) == ("uncertain", None, 0.92)


def test_boxes_carry_their_frame():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    started = decisions.started(track, FrameRef(10, 64, 48, 1.0), 1)
    assert (started.type, started.box, started.frame_seq, started.frame_width, started.frame_height) == (
        "track_started",
        [1, 1, 40, 40],
        10,
        64,
        48,
    )
    assert started.event_id == event_id("cam", track.track_id, "started")
    match = decisions.observe(track, _box(2, 2), FrameRef(11, 64, 48, 1.1), ADA, 1)
    assert (match.box, match.frame_seq, match.frame_width, match.frame_height) == ([2, 2, 41, 41], 11, 64, 48)


def test_track_updates_at_most_once_per_interval_of_frame_time():
    off = TrackDecisions("cam", DecisionRules(min_faces=1), "m")
    on = TrackDecisions("cam", DecisionRules(min_faces=1, update_interval_s=1.0), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    on.started(track, _at(1.0), 1)
    updates = []
    for t in range(1, 26):  # 2.5 s of frames at 10 fps after the birth frame
        assert off.updated(track, track.box, _at(1.0 + t / 10), 1) is None
        if t == 5:
            on.observe(track, track.box, _at(1.5), ADA, 1)
        update = on.updated(track, track.box, _at(1.0 + t / 10), 1)
        if update is not None:
            updates.append(update)
    assert [u.frame_seq for u in updates] == [20, 30]  # 1 s and 2 s after the birth
    assert [u.identity_id for u in updates] == ["id-ada", "id-ada"]
    assert len({u.event_id for u in updates}) == 2
