"""Non-max suppression: dlib's greedy rule for its detectors, greedy IoU suppression for RetinaFace."""

from __future__ import annotations

import numpy as np
import torch


def nms_keep(rects: np.ndarray, iou_threshold: float, percent_covered: float) -> np.ndarray:
    """Indices of ``rects`` (K, 4 inclusive ints, best first) that dlib's greedy NMS keeps.

    Two boxes overlap when they intersect and the intersection over the area of the box enclosing
    both exceeds ``iou_threshold``, or it covers more than ``percent_covered`` of either box.
    """
    rects = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    area = (rects[:, 2] - rects[:, 0] + 1) * (rects[:, 3] - rects[:, 1] + 1)
    alive = np.ones(len(rects), dtype=bool)
    keep = []
    for index in range(len(rects)):
        if not alive[index]:
            continue
        keep.append(index)
        a = rects[index]
        inter_w = np.minimum(a[2], rects[:, 2]) - np.maximum(a[0], rects[:, 0]) + 1
        inter_h = np.minimum(a[3], rects[:, 3]) - np.maximum(a[1], rects[:, 1]) + 1
        inner = (np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)).astype(np.float64)
        outer_w = np.maximum(a[2], rects[:, 2]) - np.minimum(a[0], rects[:, 0]) + 1
        outer_h = np.maximum(a[3], rects[:, 3]) - np.minimum(a[1], rects[:, 1]) + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            overlaps = (inner > 0) & (
                (inner / (outer_w * outer_h) > iou_threshold)
                | (inner / area[index] > percent_covered)
                | (inner / area > percent_covered)
            )
        alive &= ~overlaps
    return np.asarray(keep, dtype=np.int64)


def iou_nms_keep(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of ``boxes`` (K, 4 float [x1, y1, x2, y2], best first) that greedy IoU suppression keeps.

    A box is dropped when its intersection over union with a better box that is kept exceeds
    ``iou_threshold`` (the rule of RetinaFace's reference code, on continuous coordinates). The
    greedy pass is sequential by nature; here it runs as whole-vector steps: with the "better box
    overlaps" matrix fixed, ``keep = not any(kept better box overlaps)`` is iterated until it stops
    changing. Box i's answer is final once those of all better boxes are, so it converges to the
    greedy result, in as many steps as the longest chain of suppressions (a few for real faces).
    """
    count = boxes.shape[0]
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area[:, None] + area[None, :] - inter
    iou = inter / union.clamp(min=torch.finfo(torch.float32).tiny)
    # overlaps[i, j]: box i is better than box j (i < j) and would suppress it
    overlaps = torch.triu(iou > iou_threshold, diagonal=1)
    keep = torch.ones(count, dtype=torch.bool, device=boxes.device)
    for _ in range(count):
        suppressed = (overlaps & keep[:, None]).any(dim=0)
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    return torch.nonzero(keep).flatten()
