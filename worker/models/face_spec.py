"""What the face network takes and gives, without importing torch (the watchlist store needs it too).

dlib's face ResNet reads 150x150 RGB chips cut with 0.25 padding around the 5-point landmarks and
maps each to a 128-d descriptor; descriptors of the same person lie within about 0.6 of each other.
"""

from __future__ import annotations

from typing import Final

CHIP_SIZE: Final = 150
CHIP_PADDING: Final = 0.25
EMBEDDING_SIZE: Final = 128
MODEL_VERSION: Final = "dlib_face_recognition_resnet_model_v1"
