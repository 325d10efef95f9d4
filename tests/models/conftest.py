"""Fixtures of the model tests: real faces cut as OpenFace cuts them, and a Torch7 nn4.small2 file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models.openface_reference import build_model
from tests.models.torch7_writer import dumps
from tests.realdata import hog_faces
from worker.vision.align import openface_chips
from worker.vision.landmarks import LandmarkPredictor


@pytest.fixture(scope="session")
def openface_faces() -> np.ndarray:
    """(N, 96, 96, 3) uint8 chips of real faces: HOG boxes, dlib's 68 landmarks, OpenFace's 96x96 alignment."""
    faces = hog_faces(lfw_people=6, points=68)
    chips = [openface_chips(image, LandmarkPredictor.as_array(shapes)) for image, shapes in faces]
    found = np.concatenate(chips)
    assert len(found) >= 3
    return found


@pytest.fixture(scope="session")
def openface_t7(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """(path, module tree) of an nn4.small2 .t7 file laid out as OpenFace saves it, random weights."""
    root = build_model(seed=7)
    path = tmp_path_factory.mktemp("t7") / "nn4.small2.random.t7"
    path.write_bytes(dumps(root))
    return path, root
