"""Face quality against recognition errors: strangers' false matches and enrolled people's true matches.

The watchlist's worst failure on real cameras is a stranger's small, blurred or turned face
landing within the match threshold of one of many enrolled people. This measures, per quality
bin (worker/vision/quality.py):

- strangers: every face of a detection set with ground truth (e.g. WIDER FACE crowds, none of
  them enrolled), aligned on its ground-truth box, identified against a gallery of LFW people:
  the share that come out ``match`` (a false alarm waiting for a second vote) and ``uncertain``;
- enrolled people: a second photo of each gallery person, shrunk so the face is 16 to 96 px wide
  (what a camera sees at a distance), identified against the same gallery: the share that come
  out as a match to the right person.

Identification is the watchlist's own (store, exact index, thresholds from the config).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from worker.config import Settings
from worker.errors import FacewatchError, ImageError
from worker.evaluation.dataset import DatasetEmbedder, first_people
from worker.recognition import FaceRecognizer
from worker.runtime.progress import progress_bar
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.vision.quality import FaceQuality, detector_points, face_quality
from worker.watchlist.identify import MATCH, UNCERTAIN, Identifier
from worker.watchlist.index import WatchlistIndex
from worker.watchlist.store import WatchlistStore

PROBE_WIDTHS = (16, 24, 32, 48, 64, 96)  # face widths the enrolled people's probes are shrunk to
QUALITY_BINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.01)
SIZE_BINS = (0, 12, 16, 20, 24, 32, 48, 64, 96, 100_000)
MIN_STRANGER_WIDTH = 8  # narrower ground-truth faces cannot be aligned at all
CHUNK = 128


@dataclass
class Probes:
    """Identified faces: quality and outcome per face."""

    quality: FaceQuality
    status: np.ndarray  # (N,) match / uncertain / unknown
    correct: np.ndarray  # (N,) bool: matched the right person (always False for strangers)


def _identify_batch(
    recognizer: FaceRecognizer, identifier: Identifier, items: Sequence[tuple[np.ndarray, Box]]
) -> tuple[FaceQuality, list]:
    """Align, embed and identify faces given as (image, box); quality of each."""
    landmarks, chips = [], []
    for image, box in items:
        points, chip = recognizer.align(image, [box])
        landmarks.append(points[0])
        chips.append(chip[0])
    chip_array = np.stack(chips)
    boxes = [box for _, box in items]
    quality = face_quality(chip_array, np.stack(landmarks), np.array([b.width for b in boxes]), detector_points(boxes))
    return quality, identifier.identify(recognizer.embedder.embed(chip_array))


def _concat(parts: list[FaceQuality]) -> FaceQuality:
    return FaceQuality(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("size", "sharpness", "yaw", "score")))


def _run(
    recognizer: FaceRecognizer,
    identifier: Identifier,
    jobs: Iterator[tuple[np.ndarray, Box, str | None]],
    total: int,
    desc: str,
    progress: bool,
) -> Probes:
    qualities, statuses, correct = [], [], []
    batch: list[tuple[np.ndarray, Box, str | None]] = []
    bar = progress_bar(total=total, desc=desc, unit="face", enabled=progress)

    def flush() -> None:
        quality, results = _identify_batch(recognizer, identifier, [(image, box) for image, box, _ in batch])
        qualities.append(quality)
        statuses.extend(r.status for r in results)
        correct.extend(
            r.status == MATCH and r.identity_id == truth for r, (_, _, truth) in zip(results, batch, strict=True)
        )
        bar.update(len(batch))
        batch.clear()

    for job in jobs:
        batch.append(job)
        if len(batch) == CHUNK:
            flush()
    if batch:
        flush()
    bar.close()
    if not qualities:
        raise FacewatchError(f"no faces to measure for {desc}")
    return Probes(_concat(qualities), np.array(statuses), np.array(correct, bool))


def _stranger_jobs(dataset: Path, limit: int | None) -> tuple[list[tuple[Path, Box]], int]:
    gt = dataset / "gt.jsonl"
    if not gt.is_file():
        raise FacewatchError(f"{gt} not found: a detection set has DIR/gt.jsonl (see docs/accuracy.md)")
    faces: list[tuple[Path, Box]] = []
    for number, line in enumerate(gt.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ignore = set(record.get("ignore", []))
            boxes = [(i, b) for i, b in enumerate(record["boxes"]) if i not in ignore]
            image = dataset / record["image"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FacewatchError(f"{gt}:{number}: not a ground-truth line ({exc})") from None
        for _, (left, top, right, bottom) in boxes:
            box = Box(round(left), round(top), round(right) - 1, round(bottom) - 1)
            if box.width >= MIN_STRANGER_WIDTH:
                faces.append((image, box))
    if limit is not None:
        faces = faces[:limit]
    return faces, len(faces)


def _images_with_boxes(faces: list[tuple[Path, Box]], max_pixels: int) -> Iterator[tuple[np.ndarray, Box, None]]:
    cache: tuple[Path, np.ndarray] | None = None
    for path, box in faces:
        if cache is None or cache[0] != path:
            try:
                cache = (path, load_image(path, max_pixels))
            except ImageError:
                continue
        yield cache[1], box, None


def _shrunk_probes(
    probes: list[tuple[Path, Box, str]], max_pixels: int
) -> Iterator[tuple[np.ndarray, Box, str | None]]:
    """Each probe photo shrunk so its face is each of PROBE_WIDTHS wide (and as it is)."""
    for path, box, identity in probes:
        try:
            image = load_image(path, max_pixels)
        except ImageError:
            continue
        yield image, box, identity
        for width in PROBE_WIDTHS:
            factor = width / box.width
            if factor >= 1.0:
                continue
            small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            height, wide = small.shape[:2]
            yield small, box.scaled(factor).clipped(wide, height), identity


def measure(
    settings: Settings,
    strangers: Path,
    lfw_images: Path,
    gallery_size: int = 1000,
    stranger_limit: int | None = None,
    progress: bool = True,
) -> tuple[Probes, Probes]:
    """(strangers, enrolled people's shrunk probes), identified against a gallery of ``gallery_size`` LFW people."""
    recognizer = FaceRecognizer(settings)
    recognizer.load()
    people = first_people(lfw_images, gallery_size)
    embedder = DatasetEmbedder(recognizer, flip_average=False, progress=progress)
    enrolled = embedder.embed([photos[0] for photos in people], "gallery photos")
    second = [photos[1] for photos in people if len(photos) > 1]
    with (
        tempfile.TemporaryDirectory(prefix="facewatch-quality-") as folder,
        WatchlistStore(Path(folder) / "gallery.db") as store,
    ):
        ids: dict[Path, str] = {}
        for photos, vector in zip(people, enrolled.embeddings, strict=True):
            if np.isfinite(vector).all():
                identity, _ = store.add_identity_with_templates(photos[0].parent.name, vector[None, :])
                ids[photos[0].parent] = identity.id
        index = WatchlistIndex.load_or_rebuild(
            store, Path(folder) / "gallery.index", "exact", recognizer.embedder.model_version, progress=False
        )
        identifier = Identifier.from_config(store, index, settings.watchlist)
        faces, total = _stranger_jobs(strangers, stranger_limit)
        stranger_probes = _run(
            recognizer,
            identifier,
            _images_with_boxes(faces, settings.images.max_pixels),
            total,
            "strangers",
            progress,
        )
        found = []
        for path in second:
            try:
                image = load_image(path, settings.images.max_pixels)
            except ImageError:
                continue
            boxes = recognizer.detect([image])[0]
            if boxes and path.parent in ids:
                found.append((path, max(boxes, key=lambda b: b.area), ids[path.parent]))
        enrolled_probes = _run(
            recognizer,
            identifier,
            _shrunk_probes(found, settings.images.max_pixels),
            len(found) * (1 + len(PROBE_WIDTHS)),
            "enrolled people's probes",
            progress,
        )
    return stranger_probes, enrolled_probes


def quality_table(strangers: Probes, enrolled: Probes, bins: Sequence[float] = QUALITY_BINS) -> list[dict]:
    """One row per quality bin: strangers' match and uncertain rates, enrolled people's true-match rate."""
    return _table("quality", strangers.quality.score, enrolled.quality.score, strangers, enrolled, bins, "{:.2f}")


def size_table(strangers: Probes, enrolled: Probes, bins: Sequence[float] = SIZE_BINS) -> list[dict]:
    """The same per face width in pixels."""
    return _table("width_px", strangers.quality.size, enrolled.quality.size, strangers, enrolled, bins, "{:.0f}")


def _table(
    key: str,
    stranger_values: np.ndarray,
    enrolled_values: np.ndarray,
    strangers: Probes,
    enrolled: Probes,
    bins: Sequence[float],
    number: str,
) -> list[dict]:
    rows = []
    for low, high in itertools.pairwise(bins):
        s = (stranger_values >= low) & (stranger_values < high)
        e = (enrolled_values >= low) & (enrolled_values < high)
        top = "" if high >= 1e4 else number.format(min(high, 1.0) if key == "quality" else high)
        rows.append(
            {
                key: f"{number.format(low)}-{top}",
                "strangers": int(s.sum()),
                "stranger_match": float((strangers.status[s] == MATCH).mean()) if s.any() else None,
                "stranger_uncertain": float((strangers.status[s] == UNCERTAIN).mean()) if s.any() else None,
                "enrolled": int(e.sum()),
                "enrolled_correct": float(enrolled.correct[e].mean()) if e.any() else None,
            }
        )
    return rows
