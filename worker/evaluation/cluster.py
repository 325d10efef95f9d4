"""Clustering quality: pairwise and BCubed precision/recall against true identities, and the threshold split.

`facewatch eval cluster` clusters the images of people with two or more images. The threshold is
chosen on the people named in LFW's pairsDevTrain.txt (best BCubed F over a sweep) and reported on
everyone else, so the people it is measured on never chose it.

BCubed (Bagga and Baldwin): for each item, precision is the share of its cluster that has its
label and recall the share of its label that is in its cluster; both are averaged over items.
Pairwise: precision and recall over the pairs of items put in one cluster. All counting goes
through a contingency table (numpy), never a loop over pairs.

Per track on a video (``--video``, the Hamilton clip): every frame is detected and tracked as the
worker does; each track's mean embedding is one item. Tracks are labelled either by eye
(``--labels``: worker/evaluation/data/hamilton_tracks.json, a person per track, matched by the
track's first frame and box), an independent ground truth, or with the nearest of the given stills
(one photo per person) within the watchlist's match threshold, which comes from the same face
model and only checks that tracks of one person end up as one visitor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from worker.config import TrackingConfig
from worker.errors import FacewatchError
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


@dataclass
class VideoTrack:
    """One track of a video as the worker would hand it to visitors, with where it began (its key in a
    labels file: track ids depend on the tracker's numbering, the first frame and box do not)."""

    track_id: str
    embedding: np.ndarray  # mean of its faces' embeddings
    faces: int
    first_frame: int  # index of the frame it was born in (0-based, decode order)
    first_box: tuple[int, int, int, int]  # left, top, right, bottom in that frame
    started: float = 0.0  # frame time of its first and last face, seconds
    ended: float = 0.0
    crops: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (frame, face crop) when asked for


def video_tracks(
    recognizer: FaceRecognizer, video: Path, tracking: TrackingConfig, batch: int = 8, crops: int = 0
) -> list[VideoTrack]:
    """Every frame of a video detected (detect_every 1), tracked with the worker's tracker (correlation off, tracks
    end at scene cuts),
    aligned and embedded; one ``VideoTrack`` per track, as the worker would hand them to visitors.
    ``crops``: keep up to that many face crops per track, spread over its frames (for labelling by eye)."""
    cuts = tracking.scene_cut_threshold if tracking.scene_cuts else None  # as the worker: no track spans a cut
    tracker = CameraTracker("eval", tracking.iou_threshold, tracking.max_age_s, False, scene_cut_threshold=cuts)
    found: dict[str, VideoTrack] = {}
    sums: dict[str, np.ndarray] = {}
    every: dict[str, list[tuple[int, np.ndarray]]] = {}
    frames: list[tuple[int, float, np.ndarray]] = []

    def flush() -> None:
        images = [image for _, _, image in frames]
        for (index, moment, image), boxes in zip(frames, recognizer.detect(images), strict=True):
            update = tracker.detected(image, moment, boxes)
            for track in update.born:
                box = track.box
                found[track.track_id] = VideoTrack(
                    track.track_id, np.zeros(0), 0, index, (box.left, box.top, box.right, box.bottom), moment
                )
            if not update.matched:
                continue
            faces = recognizer.analyze([image], [[box for _, box in update.matched]])[0]
            for (track, box), embedding in zip(update.matched, faces.embeddings, strict=True):
                sums[track.track_id] = sums.get(track.track_id, 0.0) + embedding.astype(np.float64)
                found[track.track_id].faces += 1
                found[track.track_id].ended = moment
                if crops:
                    height, width = image.shape[:2]
                    crop = image[max(0, box.top) : min(height, box.bottom), max(0, box.left) : min(width, box.right)]
                    every.setdefault(track.track_id, []).append((index, crop.copy()))
        frames.clear()

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            frames.append((index, float(frame.time or 0.0), frame.to_ndarray(format="rgb24")))
            if len(frames) == batch:
                flush()
    flush()
    tracks = []
    for track_id in sorted(found):
        track = found[track_id]
        if not track.faces:
            continue
        track.embedding = (sums[track_id] / track.faces).astype(np.float32)
        if crops:
            seen = every[track_id]
            track.crops = [seen[i] for i in sorted({round(x) for x in np.linspace(0, len(seen) - 1, crops)})]
        tracks.append(track)
    return tracks


def label_tracks(tracks: Sequence[VideoTrack], stills: dict[str, np.ndarray], max_distance: float) -> list[str | None]:
    """Each track's person: the nearest still within ``max_distance``, else None (not scored)."""
    names = list(stills)
    if not names:
        return [None] * len(tracks)
    matrix = np.stack([stills[name] for name in names])
    labels: list[str | None] = []
    for track in tracks:
        distances = np.linalg.norm(matrix - track.embedding, axis=1)
        best = int(np.argmin(distances))
        labels.append(names[best] if distances[best] <= max_distance else None)
    return labels


HAMILTON_LABELS = Path(__file__).parent / "data" / "hamilton_tracks.json"
UNSURE = "unsure"


@dataclass(frozen=True)
class TrackLabel:
    """A person label given by eye to the track that began in ``first_frame`` at ``first_box``."""

    first_frame: int
    first_box: tuple[int, int, int, int]
    label: str
    track_id: str = ""


def read_track_labels(path: Path) -> list[TrackLabel]:
    """The entries of a labels file (worker/evaluation/data/hamilton_tracks.json is one)."""
    try:
        data = json.loads(Path(path).read_text())
        return [
            TrackLabel(
                int(t["first_frame"]), tuple(int(v) for v in t["first_box"]), str(t["label"]), t.get("track_id", "")
            )
            for t in data["tracks"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FacewatchError(f"track labels {path}: {exc}") from exc


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, right - left + 1) * max(0, bottom - top + 1)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / area if area > 0 else 0.0


def labels_by_eye(tracks: Sequence[VideoTrack], entries: Sequence[TrackLabel]) -> list[str | None]:
    """Each track's label from ``entries``: the entry with the same first frame whose box overlaps its
    first box best (IoU >= 0.5); None when there is none or it is "unsure" (not scored)."""
    labels: list[str | None] = []
    for track in tracks:
        candidates = [(e, _iou(e.first_box, track.first_box)) for e in entries if e.first_frame == track.first_frame]
        best = max(candidates, key=lambda c: c[1], default=None)
        found = best[0].label if best is not None and best[1] >= 0.5 else None
        labels.append(None if found == UNSURE else found)
    return labels
