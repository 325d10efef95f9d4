"""The interface every face detector implements: RGB images in, boxes with scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from worker.vision.boxes import Box


class FaceDetector(ABC):
    """Finds faces. Images are RGB uint8 H x W x 3; boxes come back per image, best score first."""

    name: ClassVar[str]

    @abstractmethod
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        """Boxes for each image, in the images' order."""

    def detect(self, image: np.ndarray) -> list[Box]:
        """Boxes for one image."""
        return self.detect_batch([image])[0]


def sorted_boxes(boxes: list[Box]) -> list[Box]:
    """Boxes by descending score, the order every detector returns."""
    return sorted(boxes, key=lambda box: -box.score)
