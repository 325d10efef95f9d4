"""Facial landmarks with dlib's shape predictors (regression-tree ensembles).

The 5-point model (eye corners and nose base) is the default and carries no use restriction.
The 68-point model is opt-in: it was trained on iBUG 300-W, whose licence excludes commercial use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dlib
import numpy as np

from worker.models.files import SHAPE_PREDICTOR_5, SHAPE_PREDICTOR_68, model_path
from worker.vision.boxes import Box

LANDMARK_LICENCE_NOTE = (
    "the 68-point landmark model was trained on iBUG 300-W, whose licence excludes commercial use; "
    "use it only for non-commercial work"
)


class LandmarkPredictor:
    """Landmarks for the faces in one image; ``points`` is 5 (default) or 68 (non-commercial)."""

    def __init__(self, points: int = 5, model_dir: str | Path | None = None) -> None:
        if points not in (5, 68):
            raise ValueError(f"landmark points must be 5 or 68, not {points}")
        spec = SHAPE_PREDICTOR_5 if points == 5 else SHAPE_PREDICTOR_68
        self.points = points
        self._predictor = dlib.shape_predictor(str(model_path(spec, model_dir)))

    @property
    def predictor(self) -> dlib.shape_predictor:
        """The dlib model itself, for callers that hand dlib rectangles to it directly."""
        return self._predictor

    def shapes(self, image: np.ndarray, boxes: Sequence[Box]) -> dlib.full_object_detections:
        """dlib shapes for each box (what dlib's chip extraction takes)."""
        shapes = dlib.full_object_detections()
        for box in boxes:
            shapes.append(self._predictor(image, dlib.rectangle(box.left, box.top, box.right, box.bottom)))
        return shapes

    @staticmethod
    def as_array(shapes: dlib.full_object_detections) -> np.ndarray:
        """(faces, points, 2) float32 x, y pixel coordinates."""
        if len(shapes) == 0:
            return np.zeros((0, 0, 2), np.float32)
        return np.array([[(p.x, p.y) for p in shape.parts()] for shape in shapes], dtype=np.float32)
