"""OpenCV's Viola-Jones Haar cascade, the classic alternative detector.

OpenCV 4.x wheels ship the cascade files in ``cv2.data.haarcascades``; OpenCV 5 wheels ship none,
which is why facewatch requires opencv-python-headless < 5 (or an explicit cascade path).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from worker.errors import ModelFileError
from worker.vision.boxes import Box
from worker.vision.detectors.base import FaceDetector, sorted_boxes

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


def default_cascade_path() -> Path:
    """The frontal-face cascade shipped with the installed OpenCV wheel."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder) / DEFAULT_CASCADE if folder else None
    if path is None or not path.is_file():
        raise ModelFileError(
            f"OpenCV {cv2.__version__} ships no Haar cascade {DEFAULT_CASCADE}: install opencv-python-headless<5 "
            "(4.x wheels include cv2.data.haarcascades) or set detector.haar_cascade to a cascade XML file"
        )
    return path


class HaarDetector(FaceDetector):
    """cv2.CascadeClassifier on the grayscale image; the score is the cascade's last-stage weight."""

    name = "haar"

    def __init__(
        self,
        cascade: str | Path | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
    ) -> None:
        self.path = Path(cascade) if cascade else default_cascade_path()
        self._local = threading.local()
        self._classifier()  # fail now, not in the first detection, on a bad cascade file
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def _classifier(self) -> cv2.CascadeClassifier:
        # OpenCV does not promise a cascade object is safe to share between threads: one per thread.
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = cv2.CascadeClassifier(str(self.path))
            if classifier.empty():
                raise ModelFileError(f"{self.path}: not a readable OpenCV cascade file")
            self._local.classifier = classifier
        return classifier

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        classifier = self._classifier()
        results = []
        for image in images:
            gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
            found, _, weights = classifier.detectMultiScale3(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size),
                outputRejectLevels=True,
            )
            boxes = [
                Box(int(x), int(y), int(x + w - 1), int(y + h - 1), float(score))
                for (x, y, w, h), score in zip(np.reshape(found, (-1, 4)), np.reshape(weights, (-1,)), strict=True)
            ]
            results.append(sorted_boxes(boxes))
        return results
