"""dlib's HOG + linear SVM frontal face detector."""

from __future__ import annotations

from collections.abc import Sequence

import dlib
import numpy as np

from worker.vision.boxes import Box
from worker.vision.detectors.base import FaceDetector, sorted_boxes


class HogDetector(FaceDetector):
    """dlib.get_frontal_face_detector(); ``upsample`` doubles the image that many times (finds smaller faces)."""

    name = "hog"

    def __init__(self, upsample: int = 1, min_score: float = 0.0) -> None:
        self.upsample = upsample
        self.min_score = min_score
        self._detector = dlib.get_frontal_face_detector()

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        results = []
        for image in images:
            rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
            results.append(
                sorted_boxes(
                    [
                        Box(r.left(), r.top(), r.right(), r.bottom(), float(s))
                        for r, s in zip(rects, scores, strict=True)
                    ]
                )
            )
        return results
