"""Greedy IoU suppression (RetinaFace's rule) against a plain one-box-at-a-time implementation."""

from __future__ import annotations

import numpy as np
import torch

from worker.vision.nms import iou_nms_keep


def greedy_reference(boxes: np.ndarray, threshold: float) -> list[int]:
    """The textbook loop: keep the best box left, drop every box overlapping it by more than threshold."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = list(range(len(boxes)))
    keep = []
    while alive:
        best, rest = alive[0], alive[1:]
        keep.append(best)
        overlap_w = np.clip(
            np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None
        )
        overlap_h = np.clip(
            np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None
        )
        inter = overlap_w * overlap_h
        iou = inter / (area[best] + area[rest] - inter)
        alive = [index for index, value in zip(rest, iou, strict=True) if value <= threshold]
    return keep


def test_a_suppressed_box_suppresses_nothing():
    # B overlaps A (IoU 0.5) and C overlaps B (0.5), but C barely overlaps A (0.14): A and C stay
    boxes = torch.tensor([[0, 0, 30, 10], [10, 0, 40, 10], [20, 0, 50, 10], [100, 100, 110, 110]], dtype=torch.float32)
    assert iou_nms_keep(boxes, 0.4).tolist() == [0, 2, 3]
    assert iou_nms_keep(boxes, 0.6).tolist() == [0, 1, 2, 3]
    assert iou_nms_keep(boxes[:0], 0.4).tolist() == []


def test_matches_the_greedy_loop_on_dense_clusters():
    generator = np.random.default_rng(7)
    for trial in range(20):
        centres = generator.uniform(0, 200, size=(6, 2))
        # about 40 boxes jittered around 6 faces, chains of overlaps included; best first as the detector sorts
        picks = centres[generator.integers(0, 6, size=40)] + generator.normal(0, 6, size=(40, 2))
        sizes = generator.uniform(12, 40, size=(40, 1))
        boxes = np.concatenate((picks - sizes / 2, picks + sizes / 2), axis=1).astype(np.float32)
        for threshold in (0.3, 0.4, 0.6):
            found = iou_nms_keep(torch.from_numpy(boxes), threshold).tolist()
            assert found == greedy_reference(boxes, threshold), (trial, threshold)
