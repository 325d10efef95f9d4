"""The per-camera tracker: following boxes, ending stale tracks, correlation tracking."""

from __future__ import annotations

import numpy as np

from worker.stream.tracker import CameraTracker
from worker.vision.boxes import Box


def _image(width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


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
