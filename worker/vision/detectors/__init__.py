"""Face detectors behind one interface, chosen by name: hog, mmod, haar, retinaface."""

from __future__ import annotations

from pathlib import Path

from worker.config import DetectorConfig
from worker.vision.detectors.base import FaceDetector

DETECTORS = ("hog", "mmod", "haar", "retinaface")


def create_detector(config: DetectorConfig, model_dir: str | Path | None = None) -> FaceDetector:
    """The detector named by ``config.name``, set up from the config."""
    if config.name == "hog":
        from worker.vision.detectors.hog import HogDetector

        return HogDetector(upsample=config.upsample, min_score=config.min_score)
    if config.name == "mmod":
        from worker.vision.detectors.mmod import MmodDetector

        return MmodDetector(
            upsample=config.upsample,
            min_score=config.min_score,
            device=config.device,
            model_dir=model_dir,
            precision=config.mmod_precision,
        )
    if config.name == "haar":
        from worker.vision.detectors.haar import HaarDetector

        return HaarDetector(
            cascade=config.haar_cascade,
            scale_factor=config.haar_scale_factor,
            min_neighbors=config.haar_min_neighbors,
        )
    if config.name == "retinaface":
        from worker.vision.detectors.retinaface import RetinaFaceDetector

        return RetinaFaceDetector(
            score_threshold=config.retinaface_score_threshold,
            nms_iou=config.retinaface_nms_iou,
            scale=config.retinaface_scale,
            device=config.device,
            precision=config.retinaface_precision,
        )
    raise ValueError(f"unknown detector {config.name!r}; choose one of {', '.join(DETECTORS)}")


__all__ = ["DETECTORS", "FaceDetector", "create_detector"]
