"""Real face images for tests: ../shared/data when present, else the wheel-shipped portraits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.samples import sample_paths

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_MISSING = f"needs the shared data folder {SHARED_DIR} (present in CI; absent in a user's fresh clone)"


def shared_data() -> Path:
    """../shared/data, or skip the calling test with the reason."""
    data = SHARED_DIR / "data"
    if not data.is_dir():
        pytest.skip(SHARED_MISSING)
    return data


def has_shared_data() -> bool:
    return (SHARED_DIR / "data").is_dir()


def lfw_images(people: int, offset: int = 0) -> list[Path]:
    """The first image of ``people`` LFW people (sorted by name), a deterministic sample."""
    folders = sorted((shared_data() / "lfw" / "images").iterdir())[offset : offset + people]
    return [sorted(folder.glob("*.jpg"))[0] for folder in folders]


def real_face_images(lfw_people: int = 20) -> list[Path]:
    """Stills and LFW images when ../shared is present, else the two sample portraits."""
    if not has_shared_data():
        return list(sample_paths().values())
    stills = sorted((SHARED_DIR / "data" / "stills").iterdir())
    return [*stills, *lfw_images(lfw_people), *sample_paths().values()]


def hog_faces(lfw_people: int = 20, points: int = 5) -> list[tuple[Any, list[Any]]]:
    """(image, dlib shapes of ``points`` landmarks) for each real image in which HOG finds a face."""
    from worker.vision.detectors.hog import HogDetector
    from worker.vision.image import load_image
    from worker.vision.landmarks import LandmarkPredictor

    detector, predictor = HogDetector(upsample=1), LandmarkPredictor(points)
    found = []
    for path in real_face_images(lfw_people):
        image = load_image(path)
        boxes = detector.detect(image)
        if boxes:
            found.append((image, predictor.shapes(image, boxes)))
    assert len(found) >= 2, "expected faces in the real test images"
    return found
