"""Shot changes (scene cuts) in a camera's frames: a cheap test run on every frame, before tracking.

A track is one person only while the picture is continuous: across a cut, the greedy IoU
association of worker/stream/tracker.py would hand a track to whoever is at the same place in
the next shot (and between detections, ``pipeline.detect_every``, the old boxes would stand on the
new picture). So each frame is reduced to a hue-saturation histogram of a 64x36 thumbnail, and a
frame whose histogram differs from the previous frame's by at least a threshold (total variation
distance, 0..1) is a cut.

Why this signal: on ../shared's Hamilton clip (3 cuts in 275 frames) it is 0.39 to 0.59 at the
cuts and at most 0.18 between two consecutive frames of one shot (0.19 between frames 5 apart, as
a camera that drops frames gives them); brightness (the V channel) is left out, so a change of
light weighs little. The mean absolute difference of the grey thumbnails, the other cheap signal,
is 0.11 to 0.12 at the cuts but reaches 0.12 between frames 5 apart within a shot (camera motion):
it cannot tell a pan from a cut. docs/accuracy.md ("Tracks and scene cuts") has the measurements.
It costs 0.07 to 0.4 ms a frame, 640x360 to 1920x1080, on one core of a loaded 2-core machine.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL = (64, 36)  # width, height: enough for the colours of a scene, cheap to histogram
_HUE_BINS, _SATURATION_BINS = 16, 8


def shot_signature(image: np.ndarray) -> np.ndarray:
    """The hue-saturation histogram (sums to 1) of an RGB frame's thumbnail: (128,) float32."""
    height, width = image.shape[:2]
    # Every step-th pixel first, down to about twice the thumbnail: OpenCV's area resize is fast for a whole
    # factor and slow otherwise (1.6 ms against 0.06 ms on 1080p), and colour statistics need no more pixels.
    step = max(1, min(height // (2 * THUMBNAIL[1]), width // (2 * THUMBNAIL[0])))
    small = cv2.resize(image[::step, ::step], THUMBNAIL, interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB)
    hsv = cv2.cvtColor(np.ascontiguousarray(small[:, :, :3]), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [_HUE_BINS, _SATURATION_BINS], [0, 180, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1.0)


def shot_change(a: np.ndarray, b: np.ndarray) -> float:
    """How much two signatures differ: total variation distance, 0 (same colours) .. 1 (none shared)."""
    return 0.5 * float(np.abs(a - b).sum())


class ShotChangeDetector:
    """Finds the cuts in one camera's frames, fed in order. Not thread-safe: the camera's face thread owns it."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._previous: np.ndarray | None = None
        self.last_change = 0.0  # the last frame's signal, for tests and measurements

    def is_cut(self, image: np.ndarray) -> bool:
        """Whether ``image`` starts a new shot (the first frame never does: there is nothing to compare)."""
        signature = shot_signature(image)
        previous, self._previous = self._previous, signature
        if previous is None:
            self.last_change = 0.0
            return False
        self.last_change = shot_change(previous, signature)
        return self.last_change >= self.threshold
