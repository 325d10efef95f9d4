"""The single-image recognition path: pixels -> boxes -> landmarks -> aligned chips -> embeddings.

The streaming worker uses the same stages, with the embedding step micro-batched across
cameras; this module runs them for a list of still images, embedding all their faces in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from worker.config import Settings
from worker.embed.embedder import FaceEmbedder
from worker.models.face_spec import CHIP_SIZE, EMBEDDING_SIZE, ChipSpec, chip_spec
from worker.vision.align import DLIB5_OF_68, detector_chips, dlib_chips, dlib_points_from_detector, openface_chips
from worker.vision.boxes import Box
from worker.vision.detectors import FaceDetector, create_detector
from worker.vision.landmarks import LandmarkPredictor


@dataclass
class ImageFaces:
    """The faces found in one image, row i of each array belonging to boxes[i]."""

    boxes: list[Box]
    landmarks: np.ndarray  # (faces, points, 2) float32
    chips: np.ndarray  # (faces, S, S, 3) uint8: the embedder's chips (FaceRecognizer.chip)
    embeddings: np.ndarray  # (faces, 128) float32

    def largest(self) -> int | None:
        """Index of the largest face, or None when there is none."""
        if not self.boxes:
            return None
        return max(range(len(self.boxes)), key=lambda i: self.boxes[i].area)


class FaceRecognizer:
    """Detector, landmark model and embedder, built from the settings; models load on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def detector(self) -> FaceDetector:
        return create_detector(self.settings.detector, self.settings.models.dir)

    @cached_property
    def landmarks(self) -> LandmarkPredictor:
        return LandmarkPredictor(self.settings.landmarks.points, self.settings.models.dir)

    @cached_property
    def embedder(self) -> FaceEmbedder:
        return FaceEmbedder.from_config(self.settings.embedder, self.settings.models.dir)

    def load(self, embedder: bool = True) -> None:
        """Load the models now (each otherwise loads on first use), so that the first frame is not slow."""
        for model in ("detector", "landmarks", "embedder") if embedder else ("detector", "landmarks"):
            getattr(self, model)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """Boxes per image, best first, without faces under detector.min_face_size."""
        found = self.detector.detect_batch(images)
        min_size = self.settings.detector.min_face_size
        if min_size:
            found = [[box for box in boxes if box.width >= min_size] for boxes in found]
        return found

    @property
    def chip(self) -> ChipSpec:
        """The chips ``embedder.model`` reads (known without loading it)."""
        return chip_spec(self.settings.embedder.model)

    def align(self, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks, chips) for the given boxes of one image; the chips are the ones the embedder reads.

        The landmarks are in dlib's layouts, which worker.vision.quality reads: the landmark
        model's 5 or 68 points with ``landmarks.alignment: shape_predictor``; with ``detector``,
        always dlib's 5 points, estimated from the box's own landmarks, or the shape predictor's
        for boxes without them (hog, mmod, haar), cut down from 68 when that model is configured.
        dlib's ResNet reads dlib's 150x150 chips of those points (from the detector's own five when
        it has them); nn4.small2 reads OpenFace's 96x96 chips of the outer eyes and nose.
        """
        dlib_cut = self.chip.alignment == "dlib"
        if self.settings.landmarks.alignment == "shape_predictor":
            shapes = self.landmarks.shapes(image, boxes)
            landmarks = LandmarkPredictor.as_array(shapes)
            if dlib_cut:
                return landmarks, dlib_chips(image, shapes)
            return landmarks, openface_chips(image, landmarks, self.chip.size)
        landmarks = np.zeros((len(boxes), 5, 2), np.float32)
        chips = np.zeros((len(boxes), CHIP_SIZE, CHIP_SIZE, 3), np.uint8) if dlib_cut else None
        with_points = [i for i, box in enumerate(boxes) if box.landmarks is not None]
        without = [i for i, box in enumerate(boxes) if box.landmarks is None]
        if with_points:
            points = np.array([boxes[i].landmarks for i in with_points], np.float64)
            landmarks[with_points] = dlib_points_from_detector(points)
            if chips is not None:
                chips[with_points] = detector_chips(image, points)
        if without:
            shapes = self.landmarks.shapes(image, [boxes[i] for i in without])
            fitted = LandmarkPredictor.as_array(shapes)
            landmarks[without] = fitted[:, list(DLIB5_OF_68)] if fitted.shape[1] == 68 else fitted
            if chips is not None:
                chips[without] = dlib_chips(image, shapes)
        if chips is None:
            chips = openface_chips(image, landmarks, self.chip.size)
        return landmarks, chips

    def analyze(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Box]] | None = None) -> list[ImageFaces]:
        """Detect (unless boxes are given), align and embed the faces of all images in one batch."""
        if boxes is None:
            boxes = self.detect(images)
        aligned = [self.align(image, image_boxes) for image, image_boxes in zip(images, boxes, strict=True)]
        chips = [chip for _, chip in aligned]
        size = self.chip.size
        all_chips = np.concatenate(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
        embeddings = self.embedder.embed(all_chips) if len(all_chips) else np.zeros((0, EMBEDDING_SIZE), np.float32)
        results, start = [], 0
        for image_boxes, (landmarks, image_chips) in zip(boxes, aligned, strict=True):
            end = start + len(image_chips)
            results.append(ImageFaces(list(image_boxes), landmarks, image_chips, embeddings[start:end]))
            start = end
        return results


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings (dlib's metric: same person below ~0.6)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
