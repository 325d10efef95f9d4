"""The one face-box type every detector returns."""

from __future__ import annotations

from dataclasses import dataclass

# The five points of detectors that find them (retinaface), in this order.
LANDMARK_NAMES = ("right eye", "left eye", "nose", "right mouth corner", "left mouth corner")

Landmarks = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Box:
    """A face box in image pixels. Like dlib's rectangles, right and bottom are inclusive.

    ``landmarks``: the five points of LANDMARK_NAMES as (x, y) image pixels (floats) when the
    detector finds them (retinaface), None otherwise (hog, mmod, haar). "Right eye" is the
    subject's right eye, on the left of the image for a face looking at the camera.
    """

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0
    landmarks: Landmarks | None = None

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def as_list(self) -> list[int]:
        """[left, top, right, bottom], the form used in JSON output and events."""
        return [self.left, self.top, self.right, self.bottom]

    def scaled(self, factor: float) -> Box:
        """The same box in an image resized by ``factor`` (e.g. 1/scale to undo a detection scale)."""
        landmarks = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return Box(
            round(self.left * factor),
            round(self.top * factor),
            round((self.right + 1) * factor) - 1,
            round((self.bottom + 1) * factor) - 1,
            self.score,
            landmarks,
        )

    def clipped(self, width: int, height: int) -> Box:
        """The box limited to an image of the given size (landmarks, if any, are left as they are)."""
        return Box(
            max(0, self.left),
            max(0, self.top),
            min(width - 1, self.right),
            min(height - 1, self.bottom),
            self.score,
            self.landmarks,
        )

    def iou(self, other: Box) -> float:
        """Intersection over union with another box."""
        inter_w = min(self.right, other.right) - max(self.left, other.left) + 1
        inter_h = min(self.bottom, other.bottom) - max(self.top, other.top) + 1
        if inter_w <= 0 or inter_h <= 0:
            return 0.0
        inter = inter_w * inter_h
        return inter / float(self.area + other.area - inter)
