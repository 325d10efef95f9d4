"""Derive where the detector's five landmarks sit in dlib's 150x150 face chip (worker/vision/align.py).

For each LFW image that pairs.txt does not use (so the LFW verification figures are not measured
on the faces the template came from), retinaface finds the face nearest the centre; dlib's 5-point
shape predictor is fitted on that box, and the map from the image into the chip dlib cuts from
that shape (dlib_chip_transforms) takes the detector's five points into chip pixels. Printed:

- DETECTOR_TEMPLATE: the mean chip position of each detector point, and its spread;
- DLIB5_FROM_DETECTOR: dlib's five points as affine combinations of the detector's five (rows
  sum to 1), least squares in units of each face's eye distance, fitted on all faces; and, as a
  check, the same fit on the first half of the faces scored on the second half: how well face
  quality's yaw from the estimated points follows its yaw from dlib's own points.

    PYTHONPATH=. python scripts/alignment_template.py ../shared/data/lfw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from worker.evaluation.dataset import choose_face
from worker.evaluation.lfw import read_pairs
from worker.models.face_spec import CHIP_PADDING, CHIP_SIZE
from worker.vision.align import dlib_chip_transforms
from worker.vision.detectors.retinaface import RetinaFaceDetector
from worker.vision.image import load_image
from worker.vision.landmarks import LandmarkPredictor
from worker.vision.quality import yaw_ratio


def collect(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector points and dlib's points in image pixels, detector points in chip pixels: each (N, 5, 2)."""
    detector = RetinaFaceDetector(device="cpu")
    predictor = LandmarkPredictor(5)
    detected, fitted, in_chip = [], [], []
    for path in paths:
        image = load_image(path)
        box = choose_face(detector.detect(image), image.shape[1], image.shape[0], "center")
        if box is None or box.landmarks is None:
            continue
        shapes = predictor.shapes(image, [box])
        transform = dlib_chip_transforms(shapes, CHIP_SIZE, CHIP_PADDING)[0]
        points = np.array(box.landmarks, np.float64)
        detected.append(points)
        fitted.append(LandmarkPredictor.as_array(shapes)[0].astype(np.float64))
        in_chip.append(points @ transform[:, :2].T + transform[:, 2])
    return np.array(detected), np.array(fitted), np.array(in_chip)


def affine_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(5, 5) weights W, rows summing to 1, minimising |sum_i W[j, i] source[:, i] - target[:, j]|^2."""
    # In units of each face's eye distance, so that large faces do not outweigh small ones.
    unit = np.linalg.norm(source[:, 0] - source[:, 1], axis=1)[:, None, None]
    source, target = source / unit, target / unit
    # Rows sum to 1: write the last weight as 1 minus the others and solve for those.
    design = (source[:, :4] - source[:, 4:5]).transpose(0, 2, 1).reshape(-1, 4)
    weights = np.zeros((5, 5))
    for j in range(5):
        solution, *_ = np.linalg.lstsq(design, (target[:, j] - source[:, 4]).reshape(-1), rcond=None)
        weights[j, :4] = solution
        weights[j, 4] = 1.0 - solution.sum()
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lfw", type=Path, help="LFW folder with images/ and pairs.txt (../shared/data/lfw)")
    args = parser.parse_args()
    images = args.lfw / "images"
    pairs = read_pairs(args.lfw / "pairs.txt", images)
    in_pairs = {path for pair in pairs for path in (pair.a, pair.b)}
    paths = [path for path in sorted(images.glob("*/*.jpg")) if path not in in_pairs]
    detected, fitted, in_chip = collect(paths)
    print(f"# {len(in_chip)} faces found in the {len(paths)} LFW images outside pairs.txt")

    mean, spread = in_chip.mean(axis=0), in_chip.std(axis=0)
    print("DETECTOR_TEMPLATE (chip pixels; +- one standard deviation over the faces):")
    for (x, y), (sx, sy) in zip(mean, spread, strict=True):
        print(f"    [{x:.2f}, {y:.2f}],  # +- {sx:.2f}, {sy:.2f}")

    weights = affine_weights(detected, fitted)
    print("DLIB5_FROM_DETECTOR:")
    for row in weights:
        print("    [" + ", ".join(f"{w:.4f}" for w in row) + "],")

    half = len(detected) // 2
    held_out = affine_weights(detected[:half], fitted[:half])
    estimated = np.einsum("ji,nik->njk", held_out, detected[half:])
    dlib_yaw, estimated_yaw = yaw_ratio(fitted[half:]), yaw_ratio(estimated)
    slope, intercept = np.polyfit(estimated_yaw, dlib_yaw, 1)
    # The plain alternative: eye centres and the nose tip straight into quality's 5-point reading.
    plain = np.stack([detected[half:, i] for i in (1, 1, 0, 0, 2)], axis=1)
    plain_yaw = yaw_ratio(plain)
    plain_slope, _ = np.polyfit(plain_yaw, dlib_yaw, 1)
    print(
        f"# yaw, fitted on {half} faces, on the other {len(detected) - half}: dlib's = {slope:.3f} x estimated "
        f"{intercept:+.3f}, correlation {np.corrcoef(estimated_yaw, dlib_yaw)[0, 1]:.3f}; "
        f"from eye centres and nose tip as they are: {plain_slope:.3f} x, "
        f"correlation {np.corrcoef(plain_yaw, dlib_yaw)[0, 1]:.3f}"
    )


if __name__ == "__main__":
    main()
