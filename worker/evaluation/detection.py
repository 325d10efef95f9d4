"""Face detection accuracy against ground-truth boxes: matching, precision-recall, AP, recall by face size.

Dataset: a folder with ``gt.jsonl``, one JSON object per image (docs/accuracy.md):
``{"image": "images/x.jpg", "width": W, "height": H, "boxes": [[left, top, right, bottom], ...], "ignore": [i, ...]}``.

Box convention. Ground-truth boxes are edges in continuous pixel coordinates: right and bottom are
exclusive, so a face's width is ``right - left`` (WIDER FACE's ``x, y, x + w, y + h``; dlib's
examples/faces XML ``left, top, left + width, top + height``; both datasets' boxes reach exactly the
image width and height, never one less, at the image edge). A detector's ``Box`` names the first and
last pixel inside it (right and bottom inclusive, like dlib), so it covers ``[left, right + 1)`` in
the same coordinates. Every IoU here is computed on those edges, without dlib's "+1".

Matching, per image: detections in descending score order; each takes the unmatched ground-truth
box with the highest IoU at or above the threshold, preferring faces that count over ignored ones;
every ground-truth box, ignored or not, absorbs at most one detection. A detection matched to an
ignored face is neither a true nor a false positive; an ignored face is never a miss. A ground-truth
box with no area (WIDER's ``[0, 0, 0, 0]`` placeholder for an image without faces) cannot be matched
and is treated as ignored.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import FacewatchError, ImageError
from worker.runtime.progress import progress_bar
from worker.vision.boxes import Box
from worker.vision.image import DEFAULT_MAX_PIXELS, load_image

GT_FILE = "gt.jsonl"
IOU_THRESHOLD = 0.5
# Ground-truth face heights in pixels: [low, high) per bucket.
HEIGHT_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0.0, 16.0),
    ("16-32", 16.0, 32.0),
    ("32-64", 32.0, 64.0),
    (">=64", 64.0, math.inf),
)
# Outcome of each detection.
FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, 2


@dataclass(frozen=True)
class ImageTruth:
    """The ground truth of one image: boxes (N, 4) as [left, top, right, bottom), and which are ignored."""

    path: Path
    line: int  # of gt.jsonl, for messages
    boxes: np.ndarray  # float64 (N, 4), right and bottom exclusive
    ignore: np.ndarray  # bool (N,): marked ignore in gt.jsonl, or without area
    width: int | None = None
    height: int | None = None

    @property
    def heights(self) -> np.ndarray:
        """Face heights in pixels."""
        return self.boxes[:, 3] - self.boxes[:, 1]


def _fail(gt_file: Path, line: int, message: str) -> FacewatchError:
    return FacewatchError(f"{gt_file}:{line}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _size(record: dict[str, Any], key: str, gt_file: Path, line: int) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(gt_file, line, f'"{key}" must be a positive integer, got {value!r}')
    return value


def parse_truth(text: str, dataset: Path, gt_file: Path, line: int) -> ImageTruth:
    """One gt.jsonl line, validated; FacewatchError names the file and line."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(gt_file, line, f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise _fail(gt_file, line, f"expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise _fail(gt_file, line, 'missing "image" (the image file, relative to the dataset folder)')
    path = dataset / image
    if not path.is_file():
        raise _fail(gt_file, line, f"image {path} not found")
    boxes = record.get("boxes")
    if not isinstance(boxes, list):
        raise _fail(gt_file, line, 'missing "boxes" (a list of [left, top, right, bottom])')
    for index, box in enumerate(boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise _fail(gt_file, line, f"box {index} is not [left, top, right, bottom] numbers: {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise _fail(gt_file, line, f"box {index} {box} has right < left or bottom < top")
    ignore = record.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ignore):
        raise _fail(gt_file, line, f'"ignore" must be a list of box indices, got {ignore!r}')
    outside = [i for i in ignore if not 0 <= i < len(boxes)]
    if outside:
        raise _fail(gt_file, line, f"ignore index {outside[0]} is not a box index (the line has {len(boxes)} boxes)")
    array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    ignored = np.zeros(len(array), dtype=bool)
    ignored[ignore] = True
    ignored |= (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])  # no area: cannot be matched
    return ImageTruth(
        path=path,
        line=line,
        boxes=array,
        ignore=ignored,
        width=_size(record, "width", gt_file, line),
        height=_size(record, "height", gt_file, line),
    )


def read_ground_truth(dataset: str | Path, limit: int | None = None) -> list[ImageTruth]:
    """The images of ``dataset/gt.jsonl`` (the first ``limit`` of them), every line validated."""
    dataset = Path(dataset)
    gt_file = dataset / GT_FILE
    try:
        lines = gt_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FacewatchError(f"cannot read {gt_file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FacewatchError(f"{gt_file}: not UTF-8 text") from None
    truths: list[ImageTruth] = []
    seen: dict[Path, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        truth = parse_truth(text, dataset, gt_file, number)
        if truth.path in seen:
            raise _fail(gt_file, number, f"image {truth.path} is also on line {seen[truth.path]}")
        seen[truth.path] = number
        truths.append(truth)
        if limit is not None and len(truths) == limit:
            break
    if not truths:
        raise FacewatchError(f"{gt_file}: no images listed")
    return truths


def box_edges(boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
    """Detector boxes as (N, 4) [left, top, right, bottom) edges (inclusive right + 1), and their scores."""
    edges = np.array([(b.left, b.top, b.right + 1, b.bottom + 1) for b in boxes], dtype=np.float64).reshape(-1, 4)
    return edges, np.array([b.score for b in boxes], dtype=np.float64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), both as [left, top, right, bottom)."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(
    detections: np.ndarray,
    scores: np.ndarray,
    truth: np.ndarray,
    ignore: np.ndarray,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in one image: (outcome per detection, matched flag per ground-truth box).

    Outcomes are TRUE_POSITIVE, FALSE_POSITIVE or IGNORED (matched an ignored face).
    """
    outcome = np.full(len(detections), FALSE_POSITIVE, dtype=np.int8)
    matched = np.zeros(len(truth), dtype=bool)
    if len(detections) == 0 or len(truth) == 0:
        return outcome, matched
    overlaps = iou_matrix(detections, truth)
    # Stable, so that equal scores keep the detector's order and results do not depend on the sort.
    for d in np.argsort(-scores, kind="stable"):
        candidates = (overlaps[d] >= iou_threshold) & ~matched
        if not candidates.any():
            continue
        counted = candidates & ~ignore
        # A detection covering a counted face and an ignored one is credited to the counted face.
        pool = counted if counted.any() else candidates
        best = int(np.argmax(np.where(pool, overlaps[d], -1.0)))
        matched[best] = True
        outcome[d] = IGNORED if ignore[best] else TRUE_POSITIVE
    return outcome, matched


def height_bucket(heights: np.ndarray) -> np.ndarray:
    """The HEIGHT_BUCKETS index of each face height."""
    edges = np.array([low for _, low, _ in HEIGHT_BUCKETS[1:]])
    return np.searchsorted(edges, heights, side="right")


def precision_recall(scores: np.ndarray, outcomes: np.ndarray, positives: int) -> tuple[np.ndarray, ...]:
    """(recall, precision, score threshold) at each distinct score, highest score first.

    Detections matched to ignored faces are left out. Detections with equal scores are accepted
    together, so the curve does not depend on how ties happen to be ordered.
    """
    keep = outcomes != IGNORED
    scores, hits = scores[keep], outcomes[keep] == TRUE_POSITIVE
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    true_pos = np.cumsum(hits)
    false_pos = np.cumsum(~hits)
    last_of_score = np.append(scores[1:] != scores[:-1], True) if len(scores) else np.zeros(0, dtype=bool)
    true_pos, false_pos = true_pos[last_of_score], false_pos[last_of_score]
    recall = true_pos / positives if positives else np.full(len(true_pos), np.nan)
    precision = true_pos / np.maximum(true_pos + false_pos, 1)
    return recall, precision, scores[last_of_score]


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve, VOC all-points interpolation.

    Precision at recall r is the best precision at any recall >= r; the curve is a step function
    from recall 0 to the last point's recall (recall never reached adds nothing).
    """
    if len(recall) == 0:
        return 0.0
    if np.isnan(recall).any():
        return math.nan
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * envelope))


@dataclass
class DetectionScore:
    """A detector's accuracy on a dataset; recall and precision at the detector's own threshold."""

    images: int
    faces: int
    ignored_faces: int
    detections: int
    true_positives: int
    false_positives: int
    ignored_detections: int
    recall: float
    precision: float
    average_precision: float
    faces_by_height: dict[str, int]
    recall_by_height: dict[str, float | None]
    curve_recall: np.ndarray = field(repr=False)
    curve_precision: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The figures as JSON-ready values (no curve)."""

        def rounded(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else round(value, 6)

        return {
            "images": self.images,
            "faces": self.faces,
            "ignored_faces": self.ignored_faces,
            "detections": self.detections,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "ignored_detections": self.ignored_detections,
            "recall": rounded(self.recall),
            "precision": rounded(self.precision),
            "average_precision": rounded(self.average_precision),
            "faces_by_height": dict(self.faces_by_height),
            "recall_by_height": {name: rounded(value) for name, value in self.recall_by_height.items()},
        }


def score_detections(
    truths: Sequence[ImageTruth],
    detections: Sequence[Sequence[Box] | None],
    iou_threshold: float = IOU_THRESHOLD,
) -> DetectionScore:
    """Match every image's detections and add up; an image whose detections are None is left out."""
    all_scores, all_outcomes, heights, found = [], [], [], []
    images = ignored_faces = 0
    for truth, boxes in zip(truths, detections, strict=True):
        if boxes is None:
            continue
        images += 1
        edges, scores = box_edges(boxes)
        outcome, matched = match_image(edges, scores, truth.boxes, truth.ignore, iou_threshold)
        all_scores.append(scores)
        all_outcomes.append(outcome)
        heights.append(truth.heights[~truth.ignore])
        found.append(matched[~truth.ignore])
        ignored_faces += int(truth.ignore.sum())
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    outcomes = np.concatenate(all_outcomes) if all_outcomes else np.zeros(0, dtype=np.int8)
    face_heights = np.concatenate(heights) if heights else np.zeros(0)
    face_found = np.concatenate(found) if found else np.zeros(0, dtype=bool)
    faces = len(face_heights)
    true_pos = int(np.sum(outcomes == TRUE_POSITIVE))
    false_pos = int(np.sum(outcomes == FALSE_POSITIVE))
    recall, precision, _ = precision_recall(scores, outcomes, faces)
    bucket = height_bucket(face_heights)
    faces_by_height, recall_by_height = {}, {}
    for index, (name, _, _) in enumerate(HEIGHT_BUCKETS):
        members = bucket == index
        faces_by_height[name] = int(members.sum())
        recall_by_height[name] = float(face_found[members].mean()) if members.any() else None
    return DetectionScore(
        images=images,
        faces=faces,
        ignored_faces=ignored_faces,
        detections=len(outcomes),
        true_positives=true_pos,
        false_positives=false_pos,
        ignored_detections=int(np.sum(outcomes == IGNORED)),
        recall=true_pos / faces if faces else math.nan,
        precision=true_pos / (true_pos + false_pos) if true_pos + false_pos else math.nan,
        average_precision=average_precision(recall, precision),
        faces_by_height=faces_by_height,
        recall_by_height=recall_by_height,
        curve_recall=recall,
        curve_precision=precision,
    )


@dataclass
class DetectionRun:
    """What a detector returned on a dataset: boxes per image (None: the image could not be read)."""

    detections: list[list[Box] | None]
    seconds: float  # spent in the detector only, after one warm-up image

    @property
    def images_per_second(self) -> float:
        """Readable images per second of detector time (NaN when none was timed)."""
        done = sum(boxes is not None for boxes in self.detections)
        return done / self.seconds if self.seconds > 0 else math.nan


def _decode(truths: Sequence[ImageTruth], gt_file: Path, max_pixels: int) -> list[np.ndarray | ImageError]:
    images: list[np.ndarray | ImageError] = []
    for truth in truths:
        try:
            image = load_image(truth.path, max_pixels=max_pixels)
        except ImageError as exc:
            images.append(exc)
            continue
        height, width = image.shape[:2]
        # A size that disagrees means the boxes were drawn on another version of the image.
        if truth.width not in (None, width) or truth.height not in (None, height):
            raise _fail(
                gt_file,
                truth.line,
                f"{truth.path} is {width}x{height} pixels, the line says {truth.width}x{truth.height}",
            )
        images.append(image)
    return images


def _decoded_batches(
    truths: Sequence[ImageTruth], gt_file: Path, batch: int, max_pixels: int
) -> Iterator[list[np.ndarray | ImageError]]:
    """Decoded batches, the next one decoded in a thread while the caller detects on this one."""
    starts = range(0, len(truths), batch)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_decode, truths[:batch], gt_file, max_pixels)
        for start in starts:
            images = pending.result()
            following = start + batch
            if following < len(truths):
                pending = pool.submit(_decode, truths[following : following + batch], gt_file, max_pixels)
            yield images


def run_detector(
    detect: Callable[[list[np.ndarray]], list[list[Box]]],
    truths: Sequence[ImageTruth],
    gt_file: Path,
    batch: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_unreadable: Callable[[ImageTruth, ImageError], None] | None = None,
    description: str = "detecting",
    progress: bool = True,
) -> DetectionRun:
    """Run ``detect`` on every image, ``batch`` images per call, timing the calls only.

    The first readable image is detected once untimed first, so model loading and first-call
    setup do not count against the detector's speed.
    """
    detections: list[list[Box] | None] = []
    seconds = 0.0
    warmed = False
    with progress_bar(total=len(truths), desc=description, unit="img", enabled=progress) as bar:
        for images in _decoded_batches(truths, gt_file, batch, max_pixels):
            offset = len(detections)
            readable = [image for image in images if isinstance(image, np.ndarray)]
            for index, image in enumerate(images):
                if isinstance(image, ImageError) and on_unreadable is not None:
                    on_unreadable(truths[offset + index], image)
            if readable and not warmed:
                detect(readable[:1])
                warmed = True
            start = time.perf_counter()
            found = iter(detect(readable) if readable else [])
            seconds += time.perf_counter() - start
            detections += [next(found) if isinstance(image, np.ndarray) else None for image in images]
            bar.update(len(images))
    return DetectionRun(detections, seconds)


def plot_precision_recall(curves: dict[str, DetectionScore], path: str | Path, title: str) -> None:
    """Save every detector's precision-recall curve on one plot as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=100)
    reach = 0.0
    for name, score in curves.items():
        ap = "n/a" if math.isnan(score.average_precision) else f"{score.average_precision:.4f}"
        (line,) = axes.plot(score.curve_recall, score.curve_precision, label=f"{name} (AP {ap})")
        if len(score.curve_recall):
            # The detector's own threshold: where its curve ends.
            axes.plot(score.curve_recall[-1:], score.curve_precision[-1:], marker="o", color=line.get_color())
            reach = max(reach, float(np.nanmax(score.curve_recall)))
    # Recall can stay far below 1 on small faces: zoom to what was reached, never hide it.
    axes.set_xlim(0, min(1.0, max(0.05, reach * 1.1)))
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise FacewatchError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
