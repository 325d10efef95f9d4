"""Embedding every image of a labelled dataset, one face per image, with a progress bar.

A dataset image is taken to show one labelled person. Which detected face is theirs: the one
nearest the image centre (LFW crops centre the labelled person; other faces are bystanders) or
the largest. When the detector finds nothing, it tries again on the image with a border added
(close-ups whose face touches the image edges defeat a sliding-window detector), and then falls
back to the median box, relative to the image size, of the faces found in the same run's other
images: derived from the data, never hand-set. Detection and alignment run in threads (dlib releases the GIL); embedding
runs in large batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from worker.errors import FacewatchError, ImageError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.recognition import FaceRecognizer
from worker.runtime.progress import progress_bar
from worker.vision.align import dlib_chips
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.vision.landmarks import LandmarkPredictor

FaceChoice = Literal["center", "largest"]
Fallback = Literal["median", "none"]
EMBED_CHUNK = 256
BORDER = 0.25  # of the image's width and height, added on each side for the second detection try


@dataclass
class DatasetEmbeddings:
    """Row i belongs to paths[i]; ``status`` is detected, fallback, no_face or unreadable."""

    paths: list[Path]
    embeddings: np.ndarray  # (N, 128) float32; NaN rows where no embedding could be made
    status: list[str]

    @property
    def failed_detections(self) -> int:
        """Images where the detector found no face (embedded from the fallback box, or not at all)."""
        return sum(state in ("fallback", "no_face") for state in self.status)


def choose_face(boxes: Sequence[Box], width: int, height: int, rule: FaceChoice) -> Box | None:
    """The labelled person's face among the detections."""
    if not boxes:
        return None
    if rule == "largest":
        return max(boxes, key=lambda box: box.area)
    cx, cy = width / 2.0, height / 2.0
    return min(boxes, key=lambda box: (box.center[0] - cx) ** 2 + (box.center[1] - cy) ** 2)


def first_people(lfw_images: Path, count: int) -> list[list[Path]]:
    """The first ``count`` people (by folder name) of a folder-per-person tree such as LFW's, photos sorted."""
    if not lfw_images.is_dir():
        raise FacewatchError(f"{lfw_images} is not a folder of LFW people (images/<Name>/<Name>_0001.jpg)")
    people = [sorted(p.glob("*.jpg")) for p in sorted(lfw_images.iterdir()) if p.is_dir()]
    people = [photos for photos in people if photos]
    if len(people) < count:
        raise FacewatchError(f"{lfw_images} has {len(people)} people with photos; asked for a gallery of {count}")
    return people[:count]


def median_relative_box(chosen: Sequence[tuple[Box, int, int]]) -> np.ndarray | None:
    """Median (left, top, right, bottom) as fractions of (width, height, width, height)."""
    if not chosen:
        return None
    rel = np.array([(b.left / w, b.top / h, b.right / w, b.bottom / h) for b, w, h in chosen], np.float64)
    return np.median(rel, axis=0)


class DatasetEmbedder:
    """Embeds a list of image files, one face each, using the recognizer's detector and models."""

    def __init__(
        self,
        recognizer: FaceRecognizer,
        face_choice: FaceChoice = "center",
        fallback: Fallback = "median",
        flip_average: bool = True,
        threads: int = 2,
        progress: bool = True,
        landmark_models: Sequence[int] = (),
    ) -> None:
        self.recognizer = recognizer
        # Extra alignments of the same face (by other landmark models) whose embeddings are averaged in.
        self.extra_landmarks = [
            LandmarkPredictor(points, recognizer.settings.models.dir)
            for points in dict.fromkeys(landmark_models)
            if points != recognizer.settings.landmarks.points
        ]
        if self.extra_landmarks and recognizer.chip.alignment != "dlib":
            raise FacewatchError("averaging in other landmark models' chips (--also-68) needs dlib's ResNet")
        self.face_choice = face_choice
        self.fallback = fallback
        self.flip_average = flip_average
        self.threads = max(1, threads)
        self.progress = progress

    def _detect_one(self, path: Path) -> tuple[Box | None, int, int] | None:
        try:
            image = load_image(path, self.recognizer.settings.images.max_pixels)
        except ImageError:
            return None
        height, width = image.shape[:2]
        boxes = self.recognizer.detect([image])[0]
        if not boxes:
            boxes = self._detect_with_border(image)
        return choose_face(boxes, width, height, self.face_choice), width, height

    def _detect_with_border(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        dy, dx = round(height * BORDER), round(width * BORDER)
        framed = cv2.copyMakeBorder(image, dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        shifted = self.recognizer.detect([framed])[0]
        return [
            Box(
                b.left - dx,
                b.top - dy,
                b.right - dx,
                b.bottom - dy,
                b.score,
                None if b.landmarks is None else tuple((x - dx, y - dy) for x, y in b.landmarks),
            )
            for b in shifted
        ]

    def _chip_one(self, job: tuple[Path, Box]) -> np.ndarray:
        """The face's chips: (1 + extra alignments, S, S, 3), S the embedder's chip size."""
        path, box = job
        image = load_image(path, self.recognizer.settings.images.max_pixels)
        chips = [self.recognizer.align(image, [box])[1][0]]
        chips += [dlib_chips(image, predictor.shapes(image, [box]))[0] for predictor in self.extra_landmarks]
        return np.stack(chips)

    def embed(self, paths: Sequence[Path], description: str = "images") -> DatasetEmbeddings:
        """Embeddings for ``paths`` (two passes: detect all, then align and embed)."""
        paths = [Path(p) for p in paths]
        # Load the models once, before the threads race to do it.
        self.recognizer.load()
        with ThreadPoolExecutor(self.threads) as pool:
            detections = list(
                progress_bar(
                    pool.map(self._detect_one, paths),
                    total=len(paths),
                    desc=f"detecting faces in {description}",
                    unit="img",
                    enabled=self.progress,
                )
            )
        found = [(d[0], d[1], d[2]) for d in detections if d is not None and d[0] is not None]
        median = median_relative_box(found) if self.fallback == "median" else None
        status: list[str] = []
        jobs: list[tuple[int, Path, Box]] = []
        for index, (path, detection) in enumerate(zip(paths, detections, strict=True)):
            if detection is None:
                status.append("unreadable")
                continue
            box, width, height = detection
            if box is None and median is not None:
                left, top, right, bottom = median * (width, height, width, height)
                box = Box(round(left), round(top), round(right), round(bottom), 0.0)
                status.append("fallback")
            elif box is None:
                status.append("no_face")
                continue
            else:
                status.append("detected")
            jobs.append((index, path, box))
        embeddings = np.full((len(paths), EMBEDDING_SIZE), np.nan, np.float32)
        bar = progress_bar(total=len(jobs), desc=f"embedding {description}", unit="face", enabled=self.progress)
        with ThreadPoolExecutor(self.threads) as pool:
            for start in range(0, len(jobs), EMBED_CHUNK):
                chunk = jobs[start : start + EMBED_CHUNK]
                chips = np.stack(list(pool.map(self._chip_one, [(path, box) for _, path, box in chunk])))
                views = chips.shape[1]
                vectors = self.recognizer.embedder.embed(chips.reshape(-1, *chips.shape[2:]), self.flip_average)
                if views > 1:
                    # Mean direction on the unit sphere: measured better than a plain mean (0.9910 vs 0.9895
                    # on LFW), but distances are then chords of unit vectors, not dlib's scale (docs/accuracy.md).
                    vectors = vectors.reshape(len(chunk), views, -1).mean(axis=1)
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                embeddings[[index for index, _, _ in chunk]] = vectors
                bar.update(len(chunk))
        bar.close()
        return DatasetEmbeddings(paths, embeddings, status)
