"""dlib's greedy non-max suppression of detection rectangles."""

from __future__ import annotations

import numpy as np


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
