"""Box: the same behaviour for detectors without landmarks, landmarks carried by the ones that find them."""

from __future__ import annotations

from worker.vision.boxes import LANDMARK_NAMES, Box

POINTS = ((30.5, 40.0), (60.0, 40.5), (45.0, 55.0), (35.0, 70.0), (58.0, 70.0))


def test_boxes_without_landmarks_behave_as_before():
    box = Box(10, 20, 89, 119, 0.9)
    assert box.landmarks is None
    assert box == Box(10, 20, 89, 119, 0.9) and hash(box) == hash(Box(10, 20, 89, 119, 0.9))
    assert box.scaled(0.5) == Box(5, 10, 44, 59, 0.9)
    assert box.clipped(50, 100) == Box(10, 20, 49, 99, 0.9)
    assert (box.width, box.height, box.as_list()) == (80, 100, [10, 20, 89, 119])


def test_landmarks_follow_scaling_and_clipping():
    box = Box(10, 20, 89, 119, 0.9, POINTS)
    assert len(POINTS) == len(LANDMARK_NAMES)
    half = box.scaled(0.5)
    assert half.landmarks == tuple((x / 2, y / 2) for x, y in POINTS)
    assert half.as_list() == [5, 10, 44, 59]
    assert box.clipped(50, 100).landmarks == POINTS
    assert box != Box(10, 20, 89, 119, 0.9)  # the points are part of what was found
    assert box.iou(Box(10, 20, 89, 119)) == 1.0
