"""What the face networks take and give, without importing torch (the watchlist store needs it too).

dlib's face ResNet (the default) reads 150x150 RGB chips cut with 0.25 padding around the 5-point
landmarks and maps each to a 128-d descriptor; descriptors of the same person lie within about 0.6
of each other. OpenFace's nn4.small2 (``embedder.model``: a weights file) reads 96x96 chips of
OpenFace's affine alignment (outer eyes and nose) and also gives 128-d unit vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from worker.config import DEFAULT_MODEL

CHIP_SIZE: Final = 150
CHIP_PADDING: Final = 0.25
EMBEDDING_SIZE: Final = 128
MODEL_VERSION: Final = "dlib_face_recognition_resnet_model_v1"


@dataclass(frozen=True)
class ChipSpec:
    """The aligned chip a network reads: its side in pixels and the alignment that cuts it."""

    size: int
    alignment: Literal["dlib", "openface"]


DLIB_CHIP: Final = ChipSpec(CHIP_SIZE, "dlib")
OPENFACE_CHIP: Final = ChipSpec(96, "openface")


def chip_spec(model: str) -> ChipSpec:
    """The chip ``embedder.model`` reads (known before its weights load)."""
    return DLIB_CHIP if model == DEFAULT_MODEL else OPENFACE_CHIP
