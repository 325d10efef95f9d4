"""Which warp cuts chips closest to dlib's own, for faces of every size (how warp_chips was chosen).

LFW faces are small (the chip upsamples them), so each face is also blown up 2, 3, 4.5 and 7
times (bicubic) to stand for the large faces of close cameras. dlib's chip geometry for the face
(its 5-point shape, scaled with the image) is cut by dlib.get_face_chip and by each candidate
warp; printed per size: the mean embedding distance to dlib's chip (dlib's face ResNet), its 95th
percentile, and the mean absolute pixel difference.

    PYTHONPATH=. python scripts/chip_interpolation.py ../shared/data/lfw/images --images 150
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import cv2
import dlib
import numpy as np

from worker.embed.embedder import FaceEmbedder
from worker.evaluation.dataset import choose_face
from worker.models.face_spec import CHIP_PADDING, CHIP_SIZE
from worker.vision.align import dlib_chip_transforms, warp_chips
from worker.vision.detectors.retinaface import RetinaFaceDetector
from worker.vision.image import load_image
from worker.vision.landmarks import LandmarkPredictor

FACTORS = (1.0, 2.0, 3.0, 4.5, 7.0)


def _direct(flag: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def warp(image: np.ndarray, transform: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, transform, (CHIP_SIZE, CHIP_SIZE), flags=flag)

    return warp


def _area_first(image: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Shrink the whole image with INTER_AREA to about one image pixel per chip pixel, then bilinear."""
    scale = 1.0 / np.sqrt(abs(np.linalg.det(transform[:, :2])))
    if scale <= 1.0:
        return _direct(cv2.INTER_LINEAR)(image, transform)
    height, width = image.shape[:2]
    small = cv2.resize(image, (round(width / scale), round(height / scale)), interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / width, small.shape[0] / height
    # a point x of the image is (x + 0.5) * f - 0.5 in the shrunk one
    to_image = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
    return _direct(cv2.INTER_LINEAR)(small, transform @ to_image)


def _pyramid_rounded(image: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """warp_chips' pyramid, but OpenCV's rounded 8-bit bilinear."""
    transform = transform.copy()
    scale = 1.0 / np.sqrt(abs(np.linalg.det(transform[:, :2])))
    while scale > 2.0:
        image = cv2.pyrDown(image)
        transform[:, :2] *= 2.0
        scale /= 2.0
    return _direct(cv2.INTER_LINEAR)(image, transform)


WARPS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "bilinear": _direct(cv2.INTER_LINEAR),
    "bicubic": _direct(cv2.INTER_CUBIC),
    "area, then bilinear": _area_first,
    "pyramid, bilinear, rounded": _pyramid_rounded,
    "warp_chips (pyramid, bilinear, truncated)": lambda image, transform: warp_chips(image, transform[None])[0],
}


def scaled_shape(shape: dlib.full_object_detection, factor: float) -> dlib.full_object_detection:
    """The shape in the image resized by ``factor`` (pixel centres: x -> (x + 0.5) * factor - 0.5)."""
    parts = [dlib.point(round((p.x + 0.5) * factor - 0.5), round((p.y + 0.5) * factor - 0.5)) for p in shape.parts()]
    rect = shape.rect
    box = dlib.rectangle(*(round(v * factor) for v in (rect.left(), rect.top(), rect.right(), rect.bottom())))
    return dlib.full_object_detection(box, parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lfw_images", type=Path, help="folder of per-person LFW image folders")
    parser.add_argument("--images", type=int, default=150, help="LFW images, evenly spread over the sorted list")
    args = parser.parse_args()
    every = sorted(args.lfw_images.glob("*/*.jpg"))
    paths = every[:: max(1, len(every) // args.images)][: args.images]
    detector, predictor, embedder = RetinaFaceDetector(device="cpu"), LandmarkPredictor(5), FaceEmbedder(device="cpu")
    distances = {(f, name): [] for f in FACTORS for name in WARPS}
    pixels = {(f, name): [] for f in FACTORS for name in WARPS}
    for path in paths:
        base = load_image(path)
        box = choose_face(detector.detect(base), base.shape[1], base.shape[0], "center")
        if box is None:
            continue
        shape = predictor.shapes(base, [box])[0]
        for factor in FACTORS:
            image = base if factor == 1 else cv2.resize(base, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
            scaled = scaled_shape(shape, factor)
            shapes = dlib.full_object_detections()
            shapes.append(scaled)
            transform = dlib_chip_transforms(shapes)[0]
            reference = dlib.get_face_chip(image, scaled, CHIP_SIZE, CHIP_PADDING)
            chips = [warp(image, transform) for warp in WARPS.values()]
            vectors = embedder.embed(np.stack([reference, *chips]))
            for name, chip, vector in zip(WARPS, chips, vectors[1:], strict=True):
                distances[(factor, name)].append(float(np.linalg.norm(vector - vectors[0])))
                pixels[(factor, name)].append(float(np.abs(chip.astype(np.int16) - reference).mean()))
    print(f"{len(distances[(1.0, 'bilinear')])} LFW faces; distance to dlib's chip: mean, 95th percentile; pixels")
    print("| face size | warp | mean distance | 95th percentile | mean abs pixel difference |")
    print("|---|---|---|---|---|")
    for factor in FACTORS:
        for name in WARPS:
            found = np.array(distances[(factor, name)])
            print(
                f"| x{factor:g} | {name} | {found.mean():.4f} | {np.percentile(found, 95):.4f} "
                f"| {np.mean(pixels[(factor, name)]):.2f} |"
            )


if __name__ == "__main__":
    main()
