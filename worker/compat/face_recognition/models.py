"""The models behind the face_recognition API: loaded once per process, each on first use.

face_recognition loads dlib's five models when it is imported; here each loads when a function
first needs it, from facewatch's model lookup (``models.dir``), with facewatch's settings from the
environment and ``$FACEWATCH_CONFIG`` (``FACEWATCH_EMBEDDER__DEVICE=cpu``, ...). This module owns
the one ``FaceModels`` of the process; its caches fill under a lock, so threads may share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import dlib
import numpy as np

from worker.config import EmbedderConfig, Settings, load_settings
from worker.embed.embedder import FaceEmbedder
from worker.models.face_spec import CHIP_PADDING, CHIP_SIZE, EMBEDDING_SIZE
from worker.vision.align import dlib_chips
from worker.vision.detectors.hog import HogDetector
from worker.vision.detectors.mmod import MmodDetector
from worker.vision.landmarks import LandmarkPredictor

T = TypeVar("T")


def _dlib_precision(config: EmbedderConfig) -> EmbedderConfig:
    """The embedder section with 'auto' taken as fp32: this layer promises dlib's descriptors (1e-5)."""
    return config.model_copy(update={"precision": "fp32"}) if config.precision == "auto" else config


class FaceModels:
    """Detectors per upsampling count, both landmark models and the embedder, built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], object] = {}

    def _get(self, key: tuple[str, int], build: Callable[[], T]) -> T:
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                found = self._cache[key] = build()
        return found  # type: ignore[return-value]

    def hog(self, upsample: int) -> HogDetector:
        """dlib's HOG detector (one per thread inside) doubling the image ``upsample`` times."""
        return self._get(("hog", upsample), lambda: HogDetector(upsample=upsample))

    def mmod(self, upsample: int) -> MmodDetector:
        """dlib's CNN detector in torch, on ``detector.device``."""
        settings = self.settings
        return self._get(
            ("mmod", upsample),
            lambda: MmodDetector(
                upsample=upsample,
                device=settings.detector.device,
                model_dir=settings.models.dir,
                precision="fp32" if settings.detector.mmod_precision == "auto" else settings.detector.mmod_precision,
            ),
        )

    def landmarks(self, points: int) -> LandmarkPredictor:
        """dlib's 5- or 68-point shape predictor."""
        return self._get(("landmarks", points), lambda: LandmarkPredictor(points, self.settings.models.dir))

    @property
    def embedder(self) -> FaceEmbedder:
        """dlib's face ResNet in torch, on ``embedder.device``."""
        return self._get(
            ("embedder", 0),
            lambda: FaceEmbedder.from_config(_dlib_precision(self.settings.embedder), self.settings.models.dir),
        )

    def encode(self, chips: np.ndarray, num_jitters: int = 1) -> np.ndarray:
        """(faces, 128) float32 descriptors of 150x150 chips, all in one batched pass.

        With ``num_jitters`` > 1 each chip is replaced by that many random variations from dlib's
        own ``jitter_image`` and its descriptor is their mean, as dlib's compute_face_descriptor
        does. dlib's generator gives the same draws in the same order as the one in
        face_recognition's encoder object (both start from dlib's fixed seed), so a fresh process
        gets the same jittered encodings as face_recognition.
        """
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        if num_jitters <= 1:
            return self.embedder.embed(chips)
        crops = np.stack([crop for chip in chips for crop in dlib.jitter_image(chip, num_jitters)])
        descriptors = self.embedder.embed(crops).reshape(len(chips), num_jitters, EMBEDDING_SIZE)
        return descriptors.mean(axis=1, dtype=np.float32)


def face_chips(
    image: np.ndarray, shapes: list[dlib.full_object_detection], padding: float = CHIP_PADDING
) -> np.ndarray:
    """(faces, 150, 150, 3) uint8 chips of dlib's alignment for an RGB or gray image."""
    if len(shapes) == 0:
        return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return dlib_chips(np.ascontiguousarray(image), dlib.full_object_detections(shapes), padding=padding)


_models: FaceModels | None = None
_models_lock = threading.Lock()


def face_models() -> FaceModels:
    """The process's models, with the settings read from the environment on the first call."""
    global _models
    with _models_lock:
        if _models is None:
            _models = FaceModels(load_settings())
        return _models


def use_settings(settings: Settings | None) -> None:
    """Use these settings from now on (None: read them again from the environment); models reload."""
    global _models
    with _models_lock:
        _models = None if settings is None else FaceModels(settings)
