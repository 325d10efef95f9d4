"""How usable a face is for recognition: size, sharpness and pose, computed for a whole batch at once.

- ``size``: the face box's width in frame pixels. The face network sees a 150x150 chip whatever
  the face's size, so a 20 px face is upscaled seven times and its embedding is mostly guesswork.
- ``sharpness``: variance of the Laplacian of the aligned chip's grey image. Upscaled small faces,
  motion blur and defocus all lower it.
- ``yaw``: how far the nose sits from the middle of the eyes, along the eye line, in units of the
  distance between the eyes (0 for a frontal face, about 0.5 in near profile). From the
  detector's own landmarks when it gives them (RetinaFace: eye centres and nose tip), else from
  dlib's 5- or 68-point landmarks. The detector's are preferred: dlib's shape predictor, trained on
  frontal faces, places frontal-looking points on a profile (measured on the Hamilton clip: a
  profile close-up read 0.25 from dlib's points and 5.3 from RetinaFace's).

``score`` in [0, 1] combines them: min(1, sharpness / SHARP) * min(1, size / SIZE) *
max(0, 1 - |yaw| / YAW). The constants were chosen from measurements of strangers' false matches
and enrolled people's true matches per quality (docs/accuracy.md, "Face quality and decisions").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from worker.models.face_spec import CHIP_SIZE
from worker.vision.boxes import Box

SHARP_FULL = 60.0  # a chip at least this sharp loses nothing to blur
SIZE_FULL = 60.0  # a face at least this wide (pixels) loses nothing to size
YAW_ZERO = 0.6  # a face turned this far (yaw ratio) scores 0
# RetinaFace's nose tip sticks out further than dlib's nose base: its raw yaw ratio reads 1.47 times
# dlib's on the same faces (scripts/alignment_template.py, held-out LFW faces); scaled to dlib's.
DETECTOR_YAW_SCALE = 1 / 1.47


@dataclass(frozen=True)
class FaceQuality:
    """Quality of a batch of faces, one row per face."""

    size: np.ndarray  # (N,) face width, pixels
    sharpness: np.ndarray  # (N,) Laplacian variance of the grey chip
    yaw: np.ndarray  # (N,) signed yaw ratio
    score: np.ndarray  # (N,) combined, in [0, 1]

    def __len__(self) -> int:
        return len(self.score)


def sharpness(chips: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each chip's grey image: (N, H, W, 3) uint8 -> (N,).

    On the scale of dlib's 150x150 chips, where the gates (enrollment.min_sharpness, the decisions'
    quality) were measured: other chips (nn4.small2's 96x96) are resized to 150x150 first, since the
    variance grows as a face is shrunk.
    """
    if len(chips) == 0:
        return np.zeros(0)
    if chips.shape[1:3] != (CHIP_SIZE, CHIP_SIZE):
        chips = _resized(chips, CHIP_SIZE)
    grey = chips.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    laplacian = (
        grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] - 4.0 * grey[:, 1:-1, 1:-1]
    )
    return laplacian.reshape(len(chips), -1).var(axis=1)


def _resized(chips: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) chips resized to (N, size, size, C), bilinear, in one cv2.resize per 512 channels: the
    chips go side by side as channels of one image (OpenCV resizes each channel on its own)."""
    count, height, width, channels = chips.shape
    per_call = max(1, 512 // channels)  # OpenCV's channel limit (CV_CN_MAX)
    out = np.empty((count, size, size, channels), chips.dtype)
    for start in range(0, count, per_call):
        part = chips[start : start + per_call]
        stacked = np.ascontiguousarray(part.transpose(1, 2, 0, 3).reshape(height, width, -1))
        resized = cv2.resize(stacked, (size, size), interpolation=cv2.INTER_LINEAR)
        out[start : start + len(part)] = resized.reshape(size, size, len(part), channels).transpose(2, 0, 1, 3)
    return out


def _eyes_and_nose(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(one eye centre, the other eye centre, nose tip), each (N, 2), from 5- or 68-point landmarks."""
    points = landmarks.shape[1]
    if points == 5:  # dlib's 5-point model: two corners of each eye, then the bottom of the nose
        return landmarks[:, 0:2].mean(axis=1), landmarks[:, 2:4].mean(axis=1), landmarks[:, 4]
    if points == 68:  # iBUG 300-W: eyes 36-41 and 42-47, nose tip 30
        return landmarks[:, 36:42].mean(axis=1), landmarks[:, 42:48].mean(axis=1), landmarks[:, 30]
    raise ValueError(f"landmarks must have 5 or 68 points, got {points}")


def yaw_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Signed offset of the nose from the eyes' midpoint along the eye line, over the eye distance: (N,)."""
    landmarks = np.asarray(landmarks, np.float64)
    if len(landmarks) == 0:
        return np.zeros(0)
    eye_a, eye_b, nose = _eyes_and_nose(landmarks)
    return _ratio(eye_a, eye_b, nose)


def detector_points(boxes: Sequence[Box]) -> np.ndarray:
    """The detector's five landmarks of each box, (N, 5, 2); NaN rows for boxes without landmarks."""
    points = np.full((len(boxes), 5, 2), np.nan)
    for row, box in enumerate(boxes):
        if box.landmarks is not None:
            points[row] = box.landmarks
    return points


def detector_yaw_ratio(points: np.ndarray) -> np.ndarray:
    """Yaw ratio from the detector's landmarks in LANDMARK_NAMES order (eyes first, then the nose): (N,)."""
    points = np.asarray(points, np.float64)
    if len(points) == 0:
        return np.zeros(0)
    eye_a, eye_b, nose = points[:, 0], points[:, 1], points[:, 2]
    return _ratio(eye_a, eye_b, nose) * DETECTOR_YAW_SCALE


def _ratio(eye_a: np.ndarray, eye_b: np.ndarray, nose: np.ndarray) -> np.ndarray:
    axis = eye_b - eye_a
    distance = np.linalg.norm(axis, axis=1)
    safe = np.maximum(distance, 1e-6)
    along = ((nose - (eye_a + eye_b) / 2.0) * axis).sum(axis=1) / safe
    # Eyes on top of each other: a face seen from the side, as turned as it gets.
    return np.where(distance > 1e-6, along / safe, np.where(np.isnan(distance), np.nan, 10.0))


def face_quality(
    chips: np.ndarray, landmarks: np.ndarray, widths: np.ndarray, detector_landmarks: np.ndarray | None = None
) -> FaceQuality:
    """Quality of each face from its aligned chip, its landmarks and its box width in pixels.

    ``detector_landmarks`` (N, 5, 2), NaN where a face has none (see ``detector_points``), give the
    yaw where present.
    """
    widths = np.asarray(widths, np.float64)
    sharp = sharpness(chips)
    yaw = yaw_ratio(landmarks)
    if detector_landmarks is not None and len(detector_landmarks):
        from_detector = detector_yaw_ratio(detector_landmarks)
        yaw = np.where(np.isnan(from_detector), yaw, from_detector)
    score = (
        np.minimum(1.0, sharp / SHARP_FULL)
        * np.minimum(1.0, widths / SIZE_FULL)
        * np.clip(1.0 - np.abs(yaw) / YAW_ZERO, 0.0, 1.0)
    )
    return FaceQuality(widths, sharp, yaw, score)
