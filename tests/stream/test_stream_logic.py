"""Pure logic of the stream stages: frame message codec, tracker, per-track decisions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from worker.stream.decisions import DecisionRules, TrackDecisions
from worker.stream.frames import BadFrame, decode_frame_message, encode_frame_message
from worker.stream.tracker import CameraTracker
from worker.vision.boxes import Box

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 10_000_000}


def _image(width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def test_frame_message_round_trip():
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it close
    key, value, headers = encode_frame_message("door-1", 7, 1700000000.123, image)
    frame = decode_frame_message(key, value, headers, **LIMITS)
    assert (frame.camera_id, frame.seq, frame.image.shape) == ("door-1", 7, image.shape)
    assert abs(frame.timestamp - 1700000000.123) < 1e-3
    assert np.abs(frame.image.astype(int) - image.astype(int)).mean() < 4  # JPEG, lossy


def _without(headers, name):
    return [(k, v) for k, v in headers if k != name]


def _with(headers, name, value):
    return [(k, value if k == name else v) for k, v in headers]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda k, v, h: (k, v, _without(h, "seq")), "missing_header"),
        (lambda k, v, h: (k, v, None), "missing_header"),
        (lambda k, v, h: (k, v, _with(h, "content_type", b"image/png")), "content_type"),
        (lambda k, v, h: (k, v, _with(h, "seq", b"seven")), "bad_header"),
        (lambda k, v, h: (k, v, _with(h, "width", b"0")), "bad_header"),
        (lambda k, v, h: (k, v, _with(h, "width", b"\xff\xfe")), "bad_header"),
        (lambda k, v, h: (b"other-camera", v, h), "camera_mismatch"),
        (lambda k, v, h: (k, b"", h), "undecodable"),
        (lambda k, v, h: (k, b"\xff\xd8garbage", h), "undecodable"),
        (lambda k, v, h: (k, v, _with(h, "width", b"65")), "size_mismatch"),
        (lambda k, v, h: (k, v + b"\0" * 1_000_000, h), "oversized"),
        (lambda k, v, h: (k, v, _with(_with(h, "width", b"100000"), "height", b"100000")), "oversized"),
    ],
)
def test_bad_frame_messages_say_why(change, reason):
    key, value, headers = change(*encode_frame_message("door-1", 1, 1.0, _image()))
    with pytest.raises(BadFrame) as caught:
        decode_frame_message(key, value, headers, **LIMITS)
    assert caught.value.reason == reason


def _box(left: int, top: int, size: int = 40) -> Box:
    return Box(left, top, left + size - 1, top + size - 1, 1.0)


def test_tracker_follows_overlapping_boxes_and_ends_stale_tracks():
    tracker = CameraTracker("cam", iou_threshold=0.3, max_age_s=1.0, correlation=False)
    image = _image(320, 240)
    first = tracker.detected(image, 10.0, [_box(10, 10), _box(200, 100)])
    assert len(first.born) == 2 and [t.track_id for t in first.born] == ["10000-0", "10000-1"]
    second = tracker.detected(image, 10.1, [_box(14, 12), _box(204, 102)])
    assert second.born == [] and {t.track_id for t, _ in second.matched} == {"10000-0", "10000-1"}
    # Only the left face is seen again; the right one ends once it is older than max_age_s.
    tracker.detected(image, 10.6, [_box(18, 14)])
    later = tracker.detected(image, 11.2, [_box(20, 14)])
    assert [t.track_id for t in later.ended] == ["10000-1"]
    assert [t.track_id for t, _ in later.matched] == ["10000-0"]
    jumped = tracker.detected(image, 11.3, [_box(250, 180)])  # no overlap: a new person
    assert [t.track_id for t in jumped.born] == ["11300-0"]


def test_tracker_is_deterministic_whatever_the_detection_order():
    image = _image(320, 240)
    boxes = [_box(10, 10), _box(100, 10), _box(200, 10)]
    a = CameraTracker("cam", correlation=False).detected(image, 5.0, boxes)
    b = CameraTracker("cam", correlation=False).detected(image, 5.0, list(reversed(boxes)))
    assert [(t.track_id, t.box) for t in a.born] == [(t.track_id, t.box) for t in b.born]


def test_correlation_tracking_moves_the_box_between_detections():
    base = np.zeros((240, 320, 3), np.uint8)
    first, second = base.copy(), base.copy()
    first[50:90, 50:90] = 255
    second[50:90, 58:98] = 255  # the bright square moved 8 px right
    tracker = CameraTracker("cam", correlation=True)
    tracker.detected(first, 1.0, [Box(50, 50, 89, 89, 1.0)])
    tracker.followed(second, 1.04)
    assert 54 <= tracker.tracks[0].box.left <= 62


@dataclass
class _Id:
    identity_id: str | None
    name: str | None
    score: float
    distance: float
    status: str = "match"


ADA = _Id("id-ada", "Ada", 0.9, 0.3)
NOBODY = _Id(None, None, 0.2, 0.9, "unknown")
UNSURE = _Id(None, None, 0.92, 0.55, "uncertain")


def test_a_track_is_announced_once_after_min_faces():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.5, cooldown_s=60), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, 1.0, ADA, 1) is None  # one face is not enough
    match = decisions.observe(track, track.box, 1.1, ADA, 1)
    assert match is not None and match.identity_id == "id-ada" and match.faces == 2
    assert match.thumbnail_jpeg_base64 is None
    assert decisions.observe(track, track.box, 1.2, ADA, 1) is None  # announced once per track
    ended = decisions.ended(track, "lost", 1)
    assert ended.identity_id == "id-ada" and ended.faces == 3 and ended.reason == "lost"


def test_vote_share_and_unknown_tracks():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.6), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    for t, who in enumerate([NOBODY, ADA, NOBODY, ADA]):
        assert decisions.observe(track, track.box, 1.0 + t / 10, who, 1) is None  # 2 of 4 < 60 %
    ended = decisions.ended(track, "end_of_stream", 1)
    assert ended.identity_id is None and ended.best_score == 0.9


def test_uncertain_faces_abstain():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=2, min_vote_share=0.6), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    for t, who in enumerate([UNSURE, ADA, UNSURE, UNSURE]):
        assert decisions.observe(track, track.box, 1.0 + t / 10, who, 1) is None
    # 2 of 5 faces, but 2 of the 2 votes cast: announced.
    match = decisions.observe(track, track.box, 1.5, ADA, 1)
    assert match is not None and match.faces == 2
    assert decisions.ended(track, "lost", 1).faces == 5


def test_cooldown_per_identity_and_camera():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=30), "m")
    tracker = CameraTracker("cam", correlation=False)
    first = tracker.detected(_image(), 100.0, [_box(1, 1)]).born[0]
    assert decisions.observe(first, first.box, 100.0, ADA, 1) is not None
    again = tracker.detected(_image(), 110.0, [_box(100, 1)]).born[0]
    assert decisions.observe(again, again.box, 110.0, ADA, 1) is None  # 10 s later: within cooldown
    late = tracker.detected(_image(), 140.0, [_box(200, 1)]).born[0]
    assert decisions.observe(late, late.box, 140.0, ADA, 1) is not None


def test_thumbnails_only_when_configured():
    chip = _image(150, 150)
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, thumbnails=True), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    match = decisions.observe(track, track.box, 1.0, ADA, 1, chip)
    assert match is not None and match.thumbnail_jpeg_base64


def test_forget_identity_erases_decision_state():
    decisions = TrackDecisions("cam", DecisionRules(min_faces=1, cooldown_s=600), "m")
    track = CameraTracker("cam", correlation=False).detected(_image(), 1.0, [_box(1, 1)]).born[0]
    assert decisions.observe(track, track.box, 1.0, ADA, 1) is not None
    decisions.forget_identity("id-ada")
    ended = decisions.ended(track, "lost", 2)
    assert ended.identity_id is None and ended.identity_name is None
