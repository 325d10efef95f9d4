"""Recall and precision of the retinaface detector at several score thresholds on a detection set.

Used to choose detector.retinaface_score_threshold (docs/benchmarks.md). The set is a folder with
images/ and gt.jsonl as in ../shared/data/detection (boxes [left, top, right, bottom] in continuous
pixels, "ignore" listing faces to count neither as found nor missed). Detections are matched best
score first to the unmatched face of highest IoU, at IoU >= 0.5; one matching an ignored face is
dropped. Recall is given for all faces and by face height.

    python scripts/retinaface_thresholds.py ../shared/data/detection/wider_val_subset200 --scale 1.0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from worker.vision.detectors.retinaface import RetinaFaceDetector
from worker.vision.image import load_image

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
HEIGHTS = ((0, 16), (16, 32), (32, 64), (64, 10**9))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (K, 4) with every box in ``b`` (M, 4), continuous [x1, y1, x2, y2]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(found: np.ndarray, faces: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, int]:
    """(which faces were found, false detections) for detections ``found`` sorted best first."""
    matched = np.zeros(len(faces), bool)
    false = 0
    overlaps = iou_matrix(found, faces) if len(found) and len(faces) else np.zeros((len(found), len(faces)))
    for row in overlaps:  # greedy by score, as detection benchmarks match
        free = np.flatnonzero(~matched & (row >= 0.5))
        if len(free) == 0:
            false += 1
            continue
        matched[free[np.argmax(row[free])]] = True
    return matched[~ignore], false


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with images/ and gt.jsonl")
    parser.add_argument("--scale", type=float, default=1.0, help="detector.retinaface_scale (default 1.0)")
    args = parser.parse_args()
    detector = RetinaFaceDetector(score_threshold=min(THRESHOLDS), scale=args.scale)
    scenes = [json.loads(line) for line in (args.folder / "gt.jsonl").read_text().splitlines()]
    found_faces: dict[float, list[np.ndarray]] = {t: [] for t in THRESHOLDS}
    false = dict.fromkeys(THRESHOLDS, 0)
    heights = []
    for scene in scenes:
        boxes = detector.detect(load_image(args.folder / scene["image"]))
        faces = np.asarray(scene["boxes"], float).reshape(-1, 4)
        ignore = np.zeros(len(faces), bool)
        ignore[scene.get("ignore", [])] = True
        heights.append((faces[:, 3] - faces[:, 1])[~ignore])
        for threshold in THRESHOLDS:
            # suppression never lets a weaker box remove a stronger one: filtering the low-threshold
            # result gives exactly what the detector returns at the higher threshold
            kept = [[b.left, b.top, b.right + 1, b.bottom + 1] for b in boxes if b.score >= threshold]
            hits, wrong = match(np.asarray(kept, float).reshape(-1, 4), faces, ignore)
            found_faces[threshold].append(hits)
            false[threshold] += wrong
    height = np.concatenate(heights)
    counts = [int(((height >= low) & (height < high)).sum()) for low, high in HEIGHTS]
    print(f"{len(scenes)} images, {len(height)} faces; by height <16 / 16-32 / 32-64 / >=64 px: {counts}")
    print("threshold  recall  precision  detections  recall by height")
    for threshold in THRESHOLDS:
        hits = np.concatenate(found_faces[threshold])
        true = int(hits.sum())
        by_height = [hits[(height >= low) & (height < high)].mean() for low, high in HEIGHTS]
        print(
            f"{threshold:9.2f}  {hits.mean():6.3f}  {true / max(1, true + false[threshold]):9.3f}  "
            f"{true + false[threshold]:10d}  " + " / ".join(f"{value:.3f}" for value in by_height)
        )


if __name__ == "__main__":
    main()
