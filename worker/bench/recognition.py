"""`facewatch bench embed` and `bench detect`: the torch ports against their references, in one run.

Inputs are real faces: the public-domain sample portraits (see worker/samples.py), cut into
chips for the embedder and fitted into 640x480 and 1280x720 frames for the detectors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import cv2
import dlib
import numpy as np
import torch

from worker.bench.timing import throughput
from worker.config import Settings
from worker.embed.embedder import FaceEmbedder
from worker.models.files import FACE_RESNET, MMOD_DETECTOR, model_path
from worker.models.nn4_small2 import Nn4Small2, fold_batch_norms
from worker.recognition import FaceRecognizer
from worker.runtime.device import cpu_has_bf16, precision_name, select_device
from worker.samples import sample_paths
from worker.vision.align import openface_chips
from worker.vision.detectors.haar import HaarDetector
from worker.vision.detectors.hog import HogDetector
from worker.vision.image import load_image
from worker.vision.landmarks import LandmarkPredictor

EMBED_BATCHES = (1, 8, 32, 64)
NN4_BATCHES = (1, 32)
NN4_IMPL = "torch-nn4.small2"
# Shares of faces the worker's checked search embeds again in fp32 (embedder.recheck_band 0.01), measured by
# scripts/precision_flips.py: 3.5% of LFW's pair probes, 17% of the open-set probes (most of them enrolled
# people, so near a threshold more often than a stranger in a crowd). Timed at batch sizes of 8 and above.
RECHECK_SHARES = (0.035, 0.17)
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


def openface_sample_chips(settings: Settings, count: int) -> np.ndarray:
    """``count`` real 96x96 chips cut as OpenFace cuts them (68 landmarks, its affine alignment), repeated."""
    detector = HogDetector(upsample=1)
    predictor = LandmarkPredictor(68, model_dir=settings.models.dir)
    chips = []
    for image in sample_images():
        boxes = detector.detect(image)
        if boxes:
            chips.append(openface_chips(image, predictor.as_array(predictor.shapes(image, boxes))))
    if not chips:
        raise RuntimeError("no face found in the sample portraits")
    found = np.concatenate(chips)
    return found[np.arange(count) % len(found)]


def embed_precisions(device: str) -> tuple[str, ...]:
    """The precisions `bench embed` measures on ``device``: fp32, and bf16 where it has bf16 units (or CUDA)."""
    resolved = select_device(device)
    if resolved.type == "cuda":
        return ("fp32", "bf16", "fp16")
    return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)


def run_embed_bench(
    settings: Settings,
    batches: tuple[int, ...] = EMBED_BATCHES,
    min_seconds: float = 2.0,
    precisions: tuple[str, ...] | None = None,
    rounds: int = 1,
    dlib_reference: bool = True,
) -> Iterator[Row]:
    """Faces/s of dlib's compute_face_descriptor and the torch embedder at each precision and batch size,
    and, at the batch sizes of NN4_BATCHES, OpenFace's nn4.small2 in fp32 (randomly initialised: its
    speed does not depend on the weights).

    Rows carry ``precision`` (dlib's is fp32). A lowered torch precision also gets rows with ``rechecked``:
    the worker's checked search, the batch at that precision plus RECHECK_SHARES of it again in fp32 (at
    least one face). Every (impl, precision) row of a batch size is timed
    ``rounds`` times in turn, ``min_seconds / rounds`` each, and reports its median round, so load
    from other jobs falls on fp32 and bf16 alike. dlib runs one round (it is the slow reference).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    recognizer = FaceRecognizer(settings)
    chips = sample_chips(recognizer, max(batches))
    precisions = precisions or embed_precisions(settings.embedder.device)
    embedders = {
        precision: FaceEmbedder.from_config(
            settings.embedder.model_copy(update={"precision": precision}), settings.models.dir
        )
        for precision in precisions
    }
    reference = (
        dlib.face_recognition_model_v1(str(model_path(FACE_RESNET, settings.models.dir))) if dlib_reference else None
    )
    nn4_batches = [batch for batch in batches if batch in NN4_BATCHES]
    if nn4_batches:
        torch.manual_seed(0)
        # As the worker would run it: batch norms folded, channels-last (as the torch ResNet's folded affines).
        device = embedders[precisions[0]].device
        nn4 = fold_batch_norms(Nn4Small2()).to(device, memory_format=torch.channels_last)
        small_chips = openface_sample_chips(settings, max(nn4_batches))
    for batch in batches:
        if reference is not None:
            chip_list = list(chips[:batch])
            rate = throughput(
                lambda chip_list=chip_list: reference.compute_face_descriptor(chip_list), batch, min_seconds
            )
            yield {
                "bench": "embed",
                "impl": "dlib",
                "precision": "fp32",
                "batch": batch,
                "size": "150x150",
                "items_per_s": rate,
            }
        calls: dict[tuple[str, str], Callable[[], object]] = {
            ("torch", precision): (lambda embedder=embedder, batch=batch: embedder.embed(chips[:batch]))
            for precision, embedder in embedders.items()
        }
        if batch in nn4_batches:
            calls[NN4_IMPL, "fp32"] = lambda batch=batch: nn4.embed(small_chips[:batch])
        checked: dict[tuple[str, str], tuple[str, float]] = {}
        for precision, embedder in embedders.items():
            if batch < 8 or not embedder.lowered:
                continue
            for share in RECHECK_SHARES:
                again = max(1, round(share * batch))

                def search(embedder: FaceEmbedder = embedder, batch: int = batch, again: int = again) -> object:
                    embedder.embed_search(chips[:batch])
                    return embedder.embed_exact(chips[:again])

                key = (f"torch+check {share:.1%}", precision)
                calls[key] = search
                checked[key] = (precision, again / batch)
        rates: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        # Round-robin: load from other jobs falls on every row alike.
        for round_index in range(rounds):
            for key, call in calls.items():
                rates[key].append(throughput(call, batch, min_seconds / rounds, warmup=0 if round_index else 1))
        for (impl, precision), measured in rates.items():
            row: Row = {
                "bench": "embed",
                "impl": "torch" if (impl, precision) in checked else impl,
                "precision": embedders[precision].precision
                if impl == "torch" or (impl, precision) in checked
                else precision,
                "batch": batch,
                "size": "96x96" if impl == NN4_IMPL else "150x150",
                "items_per_s": float(np.median(measured)),
            }
            if impl == NN4_IMPL:
                row["weights"] = "random"
            if (impl, precision) in checked:
                row["rechecked"] = round(checked[impl, precision][1], 4)
            yield row


def add_precision_ratios(rows: list[Row]) -> list[Row]:
    """Each row with ``vs_fp32``: its items/s over the same impl's fp32 row at the same bench, size and batch."""
    fp32 = {
        (row["bench"], row["impl"], row["size"], row["batch"]): row["items_per_s"]
        for row in rows
        if row.get("precision") == "fp32"
    }
    out = []
    for row in rows:
        base = fp32.get((row["bench"], row["impl"], row["size"], row["batch"]))
        out.append({**row, "vs_fp32": row["items_per_s"] / base if base and "precision" in row else None})
    return out


DETECT_IMPLS = ("dlib-hog", "dlib-mmod", "torch-mmod", "opencv-haar", "torch-retinaface", "onnxruntime-retinaface")
DetectCall = Callable[[np.ndarray, int], object]
# (impl, precision): precision is that of the torch detectors' network, None for the others.
DetectKey = tuple[str, str | None]


def _detect_calls(
    settings: Settings, impls: Collection[str], precisions: Collection[str] | None = None
) -> dict[DetectKey, tuple[tuple[int, ...], DetectCall]]:
    """For each requested impl that can run here (torch ones at each of ``precisions``, default the
    configured one): (batch sizes, call(frame, batch))."""
    calls: dict[DetectKey, tuple[tuple[int, ...], DetectCall]] = {}
    if "dlib-hog" in impls:
        hog = HogDetector(upsample=0)
        calls["dlib-hog", None] = ((1,), lambda frame, _: hog.detect(frame))
    if "dlib-mmod" in impls:
        dlib_mmod = dlib.cnn_face_detection_model_v1(str(model_path(MMOD_DETECTOR, settings.models.dir)))
        calls["dlib-mmod", None] = ((1,), lambda frame, _: dlib_mmod(frame, 0))
    if "torch-mmod" in impls:
        from worker.vision.detectors.mmod import MmodDetector

        for precision in precisions or (settings.detector.mmod_precision,):
            torch_mmod = MmodDetector(
                upsample=0, device=settings.detector.device, model_dir=settings.models.dir, precision=precision
            )
            calls["torch-mmod", precision_name(torch_mmod.dtype)] = (
                (1, 8),
                lambda frame, batch, detector=torch_mmod: detector.detect_batch([frame] * batch),
            )
    if "opencv-haar" in impls:
        haar = HaarDetector()
        calls["opencv-haar", None] = ((1,), lambda frame, _: haar.detect(frame))
    if "torch-retinaface" in impls:
        from worker.vision.detectors.retinaface import RetinaFaceDetector

        for precision in precisions or (settings.detector.retinaface_precision,):
            retinaface = RetinaFaceDetector(device=settings.detector.device, precision=precision)
            calls["torch-retinaface", precision_name(retinaface.dtype)] = (
                (1, 8),
                lambda frame, batch, detector=retinaface: detector.detect_batch([frame] * batch),
            )
    if "onnxruntime-retinaface" in impls:
        from worker.bench.onnx_retinaface import OnnxRuntimeRetinaFace, onnxruntime_available

        if onnxruntime_available():  # a test dependency: the reference row is measured where it is installed
            reference = OnnxRuntimeRetinaFace()
            calls["onnxruntime-retinaface", None] = (
                (1, 8),
                lambda frame, batch: reference.detect_batch([frame] * batch),
            )
    return calls


def run_detect_bench(
    settings: Settings,
    sizes: tuple[tuple[int, int], ...] = DETECT_SIZES,
    min_seconds: float = 2.0,
    impls: Collection[str] = DETECT_IMPLS,
    rounds: int = 1,
    precisions: Collection[str] | None = None,
) -> Iterator[Row]:
    """Images/s of dlib's HOG, dlib's MMOD, the torch MMOD, OpenCV's Haar cascade (no upsampling) and
    RetinaFace in torch, with RetinaFace in onnxruntime as its reference when onnxruntime is installed.

    The torch detectors run at each of ``precisions`` (default: the configured one); their rows carry
    ``precision``. With ``rounds`` > 1 every row is timed that many times, in turn, ``min_seconds / rounds``
    each, and reports the median.
    """
    unknown = set(impls) - set(DETECT_IMPLS)
    if unknown:  # raised here, not at the first row: this function is not itself a generator
        raise ValueError(f"unknown detect bench impls {sorted(unknown)}; known: {', '.join(DETECT_IMPLS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    return _measure_detect(_detect_calls(settings, impls, precisions), sizes, min_seconds, rounds)


def _measure_detect(
    calls: dict[DetectKey, tuple[tuple[int, ...], DetectCall]],
    sizes: tuple[tuple[int, int], ...],
    min_seconds: float,
    rounds: int,
) -> Iterator[Row]:
    portrait = sample_images()[-1]
    order = {impl: index for index, impl in enumerate(DETECT_IMPLS)}
    keys = sorted(calls, key=lambda key: order[key[0]])  # stable: precisions keep their requested order
    for width, height in sizes:
        frame = fit_frame(portrait, width, height)
        size = f"{width}x{height}"
        rows = [(key, batch) for key in keys for batch in calls[key][0]]
        rates: dict[tuple[DetectKey, int], list[float]] = {row: [] for row in rows}
        # Round-robin over the rows, so load from other jobs on a shared machine falls on every row
        # alike; each row reports its median round.
        for round_index in range(rounds):
            for key, batch in rows:
                # dlib's CNN detector runs about 0.5 images/s at 640x480 here: one timed call, no warm-up.
                slow = key[0] == "dlib-mmod"
                call = calls[key][1]
                rates[key, batch].append(
                    throughput(
                        lambda call=call, frame=frame, batch=batch: call(frame, batch),
                        batch,
                        0.0 if slow else min_seconds / rounds,
                        warmup=0 if slow or round_index else 1,
                    )
                )
        for (impl, precision), batch in rows:
            rate = float(np.median(rates[(impl, precision), batch]))
            row: Row = {"bench": "detect", "impl": impl, "batch": batch, "size": size, "items_per_s": rate}
            if precision is not None:
                row["precision"] = precision
            yield row


# Implementations compared with their own reference rather than the bench's peer, when it was measured.
# nn4.small2 is compared with the torch port of dlib's ResNet (the worker's embedder): same framework, same threads.
IMPL_PEERS = {
    "torch-retinaface": "onnxruntime-retinaface",
    "onnxruntime-retinaface": "onnxruntime-retinaface",
    NN4_IMPL: "torch",
}


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
            and (other["size"] == row["size"] or row["impl"] == NN4_IMPL)  # its 96x96 chips against 150x150
            and other["batch"] in (row["batch"], 1)
        ]
        best = max(matches, key=lambda other: other["batch"] == row["batch"], default=None)
        ratio = row["items_per_s"] / best["items_per_s"] if best else None
        out.append({**row, "ratio": ratio, "peer": peer_impl if best else None})
    return out
