"""`facewatch bench embed` and `bench detect`: the torch ports against their references, in one run.

Inputs are real faces: the public-domain sample portraits (see worker/samples.py), cut into
chips for the embedder and fitted into 640x480 and 1280x720 frames for the detectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import cv2
import dlib
import numpy as np

from worker.bench.timing import throughput
from worker.config import Settings
from worker.models.files import FACE_RESNET, MMOD_DETECTOR, model_path
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
from worker.vision.detectors.haar import HaarDetector
from worker.vision.detectors.hog import HogDetector
from worker.vision.image import load_image

EMBED_BATCHES = (1, 8, 32, 64)
DETECT_SIZES = ((640, 480), (1280, 720))

Row = dict[str, Any]


def sample_images() -> list[np.ndarray]:
    """The sample portraits as RGB arrays."""
    return [load_image(path) for path in sample_paths().values()]


def sample_chips(recognizer: FaceRecognizer, count: int) -> np.ndarray:
    """``count`` real 150x150 chips (the portraits' faces, repeated)."""
    chips = np.concatenate([faces.chips for faces in recognizer.analyze(sample_images())])
    if len(chips) == 0:
        raise RuntimeError("no face found in the sample portraits")
    return chips[np.arange(count) % len(chips)]


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The image scaled to cover a width x height frame and centre-cropped (like a camera frame)."""
    scale = max(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), cv2.INTER_AREA)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def run_embed_bench(
    settings: Settings, batches: tuple[int, ...] = EMBED_BATCHES, min_seconds: float = 2.0
) -> Iterator[Row]:
    """Faces/s of dlib's compute_face_descriptor and the torch embedder at each batch size."""
    recognizer = FaceRecognizer(settings)
    chips = sample_chips(recognizer, max(batches))
    reference = dlib.face_recognition_model_v1(str(model_path(FACE_RESNET, settings.models.dir)))
    embedder = recognizer.embedder
    for batch in batches:
        chip_list = list(chips[:batch])
        peers: list[tuple[str, Callable[[], object]]] = [
            ("dlib", lambda chip_list=chip_list: reference.compute_face_descriptor(chip_list)),
            ("torch", lambda batch=batch: embedder.embed(chips[:batch])),
        ]
        for impl, call in peers:
            rate = throughput(call, batch, min_seconds)
            yield {"bench": "embed", "impl": impl, "batch": batch, "size": "150x150", "items_per_s": rate}


def run_detect_bench(
    settings: Settings, sizes: tuple[tuple[int, int], ...] = DETECT_SIZES, min_seconds: float = 2.0
) -> Iterator[Row]:
    """Images/s of dlib's HOG, dlib's MMOD, the torch MMOD, OpenCV's Haar cascade (no upsampling) and
    RetinaFace in torch, with RetinaFace in onnxruntime as its reference when onnxruntime is installed."""
    from worker.bench.onnx_retinaface import OnnxRuntimeRetinaFace, onnxruntime_available
    from worker.vision.detectors.mmod import MmodDetector
    from worker.vision.detectors.retinaface import RetinaFaceDetector

    portraits = sample_images()
    hog = HogDetector(upsample=0)
    haar = HaarDetector()
    dlib_mmod = dlib.cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR, settings.models.dir)))
    torch_mmod = MmodDetector(upsample=0, device=settings.detector.device, model_dir=settings.models.dir)
    retinaface = RetinaFaceDetector(device=settings.detector.device, precision=settings.detector.retinaface_precision)
    reference = OnnxRuntimeRetinaFace() if onnxruntime_available() else None
    for width, height in sizes:
        frame = fit_frame(portraits[-1], width, height)
        size = f"{width}x{height}"
        peers: list[tuple[str, int, Callable[[], object]]] = [
            ("dlib-hog", 1, lambda frame=frame: hog.detect(frame)),
            # dlib's CNN detector runs about 0.5 images/s at 640x480 here: one timed call, no warm-up.
            ("dlib-mmod", 1, lambda frame=frame: dlib_mmod(frame, 0)),
            ("torch-mmod", 1, lambda frame=frame: torch_mmod.detect(frame)),
            ("torch-mmod", 8, lambda frame=frame: torch_mmod.detect_batch([frame] * 8)),
            ("opencv-haar", 1, lambda frame=frame: haar.detect(frame)),
        ]
        for impl, detector in (("torch-retinaface", retinaface), ("onnxruntime-retinaface", reference)):
            if detector is not None:
                peers.append((impl, 1, lambda frame=frame, detector=detector: detector.detect(frame)))
                peers.append((impl, 8, lambda frame=frame, detector=detector: detector.detect_batch([frame] * 8)))
        for impl, batch, call in peers:
            slow = impl == "dlib-mmod"
            rate = throughput(call, batch, 0.0 if slow else min_seconds, warmup=0 if slow else 1)
            yield {"bench": "detect", "impl": impl, "batch": batch, "size": size, "items_per_s": rate}


# Implementations compared with their own reference rather than the bench's peer, when it was measured.
IMPL_PEERS = {"torch-retinaface": "onnxruntime-retinaface", "onnxruntime-retinaface": "onnxruntime-retinaface"}


def add_ratios(rows: list[Row], peer: dict[str, str], impl_peers: dict[str, str] | None = None) -> list[Row]:
    """Each row with ``ratio``: its items/s over the peer impl's at the same bench, size and batch 1 or same batch.

    The peer is ``impl_peers[impl]`` where that impl has rows, else ``peer[bench]``.
    """
    impl_peers = IMPL_PEERS if impl_peers is None else impl_peers
    measured = {row["impl"] for row in rows}
    out = []
    for row in rows:
        peer_impl = impl_peers.get(row["impl"])
        if peer_impl not in measured:
            peer_impl = peer.get(row["bench"])
        matches = [
            other
            for other in rows
            if other["bench"] == row["bench"]
            and other["impl"] == peer_impl
            and other["size"] == row["size"]
            and other["batch"] in (row["batch"], 1)
        ]
        best = max(matches, key=lambda other: other["batch"] == row["batch"], default=None)
        ratio = row["items_per_s"] / best["items_per_s"] if best else None
        out.append({**row, "ratio": ratio, "peer": peer_impl if best else None})
    return out
