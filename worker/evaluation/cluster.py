"""Clustering quality: pairwise and BCubed precision/recall against true identities, and the threshold split.

`facewatch eval cluster` clusters the images of people with two or more images. The threshold is
chosen on the people named in LFW's pairsDevTrain.txt (best BCubed F over a sweep) and reported on
everyone else, so the people it is measured on never chose it.

BCubed (Bagga and Baldwin): for each item, precision is the share of its cluster that has its
label and recall the share of its label that is in its cluster; both are averaged over items.
Pairwise: precision and recall over the pairs of items put in one cluster. All counting goes
through a contingency table (numpy), never a loop over pairs.

Per track on a video (``--video``, the Hamilton clip): every frame is detected and tracked as the
worker does; each track's mean embedding is one item. The clip has no identity labels, so a track
is labelled with the nearest of the given stills (one photo per person) within the watchlist's
match threshold, and tracks near no still are left out. Those labels come from the same face
model, so this checks that tracks of one person end up as one visitor; it is not an independent
ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np

from worker.config import TrackingConfig
from worker.evaluation.lfw import read_pairs
from worker.recognition import FaceRecognizer
from worker.stream.tracker import CameraTracker


def _contingency(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts per (label, cluster) cell, per item's cell, per item's label and per item's cluster."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    cells = t.astype(np.int64) * (p.max() + 1) + p
    _, cell_of_item, cell_sizes = np.unique(cells, return_inverse=True, return_counts=True)
    label_sizes = np.bincount(t)
    cluster_sizes = np.bincount(p)
    return cell_sizes, cell_sizes[cell_of_item], label_sizes[t], cluster_sizes[p]


def cluster_scores(truth: Sequence | np.ndarray, predicted: Sequence | np.ndarray) -> dict[str, float | int]:
    """BCubed and pairwise precision, recall and F of ``predicted`` cluster labels against ``truth``."""
    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    if len(truth) != len(predicted) or len(truth) == 0:
        raise ValueError("truth and predicted must be non-empty and of equal length")
    cells, item_cell, item_label, item_cluster = _contingency(truth, predicted)
    b_precision = float(np.mean(item_cell / item_cluster))
    b_recall = float(np.mean(item_cell / item_label))

    def pairs(sizes: np.ndarray) -> float:
        return float(np.sum(sizes.astype(np.float64) * (sizes - 1) / 2))

    together = pairs(cells)
    predicted_pairs = pairs(np.bincount(np.unique(predicted, return_inverse=True)[1]))
    true_pairs = pairs(np.bincount(np.unique(truth, return_inverse=True)[1]))
    p_precision = together / predicted_pairs if predicted_pairs else 1.0
    p_recall = together / true_pairs if true_pairs else 1.0
    return {
        "bcubed_precision": b_precision,
        "bcubed_recall": b_recall,
        "bcubed_f": _f(b_precision, b_recall),
        "pairwise_precision": p_precision,
        "pairwise_recall": p_recall,
        "pairwise_f": _f(p_precision, p_recall),
        "clusters": len(np.unique(predicted)),
        "people": len(np.unique(truth)),
        "images": len(truth),
    }


def _f(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def dev_people(pairs_file: Path, images: Path) -> set[str]:
    """Every person named in an LFW pairs file (pairsDevTrain.txt: the people the threshold is chosen on)."""
    pairs = read_pairs(pairs_file, images)
    return {pair.a.parent.name for pair in pairs} | {pair.b.parent.name for pair in pairs}


def choose_threshold(
    cluster: Callable[[np.ndarray, float], np.ndarray],
    embeddings: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float],
) -> tuple[float, list[dict]]:
    """The threshold of ``thresholds`` with the best BCubed F on (embeddings, labels), and the whole sweep."""
    sweep = [{"threshold": float(t), **cluster_scores(labels, cluster(embeddings, float(t)))} for t in thresholds]
    best = max(sweep, key=lambda row: row["bcubed_f"])
    return best["threshold"], sweep


def video_tracks(
    recognizer: FaceRecognizer, video: Path, tracking: TrackingConfig, batch: int = 8
) -> list[tuple[str, np.ndarray, int]]:
    """Every frame of a video detected, tracked with the worker's tracker, aligned and embedded;
    returns (track id, mean embedding, faces) per track, as the worker would hand them to visitors."""
    cuts = tracking.scene_cut_threshold if tracking.scene_cuts else None  # as the worker: no track spans a cut
    tracker = CameraTracker("eval", tracking.iou_threshold, tracking.max_age_s, False, scene_cut_threshold=cuts)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    frames: list[tuple[float, np.ndarray]] = []

    def flush() -> None:
        images = [image for _, image in frames]
        for (moment, image), boxes in zip(frames, recognizer.detect(images), strict=True):
            update = tracker.detected(image, moment, boxes)
            if not update.matched:
                continue
            faces = recognizer.analyze([image], [[box for _, box in update.matched]])[0]
            for (track, _), embedding in zip(update.matched, faces.embeddings, strict=True):
                sums[track.track_id] = sums.get(track.track_id, 0.0) + embedding.astype(np.float64)
                counts[track.track_id] = counts.get(track.track_id, 0) + 1
        frames.clear()

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append((float(frame.time or 0.0), frame.to_ndarray(format="rgb24")))
            if len(frames) == batch:
                flush()
    flush()
    return [(tid, (sums[tid] / counts[tid]).astype(np.float32), counts[tid]) for tid in sorted(sums)]


def label_tracks(
    tracks: Sequence[tuple[str, np.ndarray, int]], stills: dict[str, np.ndarray], max_distance: float
) -> list[str | None]:
    """Each track's person: the nearest still within ``max_distance``, else None (not scored)."""
    names = list(stills)
    if not names:
        return [None] * len(tracks)
    matrix = np.stack([stills[name] for name in names])
    labels: list[str | None] = []
    for _, embedding, _ in tracks:
        distances = np.linalg.norm(matrix - embedding, axis=1)
        best = int(np.argmin(distances))
        labels.append(names[best] if distances[best] <= max_distance else None)
    return labels
