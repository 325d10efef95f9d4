"""Embedding dataset images: the second detection try, on the image with a border, keeps the face's landmarks."""

from __future__ import annotations

import numpy as np

from worker.config import load_settings
from worker.evaluation.dataset import DatasetEmbedder
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
from worker.vision.image import load_image


def test_the_border_retry_maps_landmarks_back_into_the_image():
    settings = load_settings(None, {"detector": {"name": "retinaface", "device": "cpu"}})
    embedder = DatasetEmbedder(FaceRecognizer(settings), progress=False)
    image = load_image(sample_paths()["Grace Hopper"])
    (plain,) = embedder.recognizer.detect([image])[0][:1]
    framed = max(embedder._detect_with_border(image), key=lambda box: box.area)
    # The detector sees another frame (the border moves the face on its anchor grid), so the box and
    # points move a little (measured: 7 px and 4 px for this 176 px face); the border is 128 px wide.
    assert framed.iou(plain) > 0.85
    assert framed.landmarks is not None
    assert np.abs(np.array(framed.landmarks) - np.array(plain.landmarks)).max() < 0.05 * plain.width
