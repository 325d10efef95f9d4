"""Face quality: sharpness, yaw from landmarks, the combined score; on real faces and made-up geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from worker.config import Settings
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
from worker.vision.image import load_image
from worker.vision.quality import SHARP_FULL, face_quality, sharpness, yaw_ratio


def _five_points(nose_dx: float) -> np.ndarray:
    """dlib's 5-point layout: two corners of each eye, then the nose; the nose moved sideways by ``nose_dx``."""
    return np.array([[[80, 50], [66, 50], [20, 50], [34, 50], [50 + nose_dx, 80]]], np.float32)


def test_yaw_is_zero_for_a_frontal_face_and_grows_with_the_turn():
    assert yaw_ratio(_five_points(0))[0] == pytest.approx(0.0)
    turned = yaw_ratio(np.concatenate([_five_points(10), _five_points(25)]))
    assert 0 < abs(turned[0]) < abs(turned[1])  # eye centres 46 px apart: 10 / 46 and 25 / 46
    assert abs(turned[1]) == pytest.approx(25 / 46)


def test_yaw_takes_68_point_landmarks_and_refuses_other_layouts():
    points = np.zeros((1, 68, 2), np.float32)
    points[0, 36:42] = (20, 50)
    points[0, 42:48] = (80, 50)
    points[0, 30] = (50, 80)
    assert yaw_ratio(points)[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="5 or 68"):
        yaw_ratio(np.zeros((1, 7, 2)))


def test_a_real_face_scores_high_and_loses_quality_when_small_or_blurred():
    recognizer = FaceRecognizer(Settings())
    image = load_image(sample_paths()["Grace Hopper"])
    (box,) = recognizer.detect([image])[0][:1]
    landmarks, chips = recognizer.align(image, [box])
    sharp_quality = face_quality(chips, landmarks, np.array([box.width]))
    assert sharp_quality.score[0] > 0.5 and abs(sharp_quality.yaw[0]) < 0.2
    factor = 20 / box.width  # the same face, 20 px wide: what a far camera sees
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    small_box = box.scaled(factor)
    small_landmarks, small_chips = recognizer.align(small, [small_box])
    small_quality = face_quality(small_chips, small_landmarks, np.array([small_box.width]))
    assert small_quality.sharpness[0] < sharp_quality.sharpness[0] / 3
    assert small_quality.score[0] < sharp_quality.score[0] / 3
    blurred = np.stack([cv2.GaussianBlur(chip, (0, 0), 3) for chip in chips])
    assert sharpness(blurred)[0] < min(SHARP_FULL, sharpness(chips)[0])


def test_sharpness_of_smaller_chips_is_measured_at_the_150_px_scale():
    """nn4.small2's 96x96 chips: resized to 150x150 first (in batches of chips stacked as channels), so the
    gates chosen on dlib's chips keep their meaning."""
    rng = np.random.default_rng(3)
    chips = cv2.GaussianBlur(rng.integers(0, 256, (200, 96, 96, 3), dtype=np.uint8).reshape(-1, 96, 3), (3, 3), 0)
    chips = chips.reshape(200, 96, 96, 3)
    one_by_one = np.stack([cv2.resize(c, (150, 150), interpolation=cv2.INTER_LINEAR) for c in chips])
    assert np.array_equal(sharpness(chips), sharpness(one_by_one))  # 200 chips: more than one call's 170
    assert not np.allclose(sharpness(chips[:3]), sharpness(one_by_one[:3, :96, :96]))  # the scale matters
