"""Face detectors behind one interface, chosen by name: hog, mmod, haar."""

from __future__ import annotations

from pathlib import Path

from worker.config import DetectorConfig
from worker.vision.detectors.base import FaceDetector

DETECTORS = ("hog", "mmod", "haar")


def create_detector(config: DetectorConfig, model_dir: str | Path | None = None) -> FaceDetector:
    """The detector named by ``config.name``, set up from the config."""
    if config.name == "hog":
        from worker.vision.detectors.hog import HogDetector

        return HogDetector(upsample=config.upsample, min_score=config.min_score)
    if config.name == "mmod":
        from worker.vision.detectors.mmod import MmodDetector

        return MmodDetector(
            upsample=config.upsample, min_score=config.min_score, device=config.device, model_dir=model_dir
        )
    if config.name == "haar":
        from worker.vision.detectors.haar import HaarDetector

        return HaarDetector(
            cascade=config.haar_cascade,
            scale_factor=config.haar_scale_factor,
            min_neighbors=config.haar_min_neighbors,
        )
    raise ValueError(f"unknown detector {config.name!r}; choose one of {', '.join(DETECTORS)}")


__all__ = ["DETECTORS", "FaceDetector", "create_detector"]
