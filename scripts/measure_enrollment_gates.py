"""Measure what the enrollment gates (face size, sharpness) see on real faces, and what they protect.

Prints Markdown tables (docs/watchlist.md quotes them):

1. faces as found: width and sharpness of the faces on a sample of LFW, on the stills, and on each
   track of the Hamilton clip (with each track's distance to the nearest still);
2. verification as a photo degrades: LFW pairs (pairsDevTest.txt) with the second photo blurred
   (Gaussian, several sigmas) or shrunk (face widths down to 30 px), binned by the degraded face's
   sharpness and width: same-person distances, true matches and false matches at 0.5 and 0.6;
3. candidate gates: for each minimum sharpness and face size, the share of faces each source
   would admit, and how the admitted degraded probes verify;
4. near-duplicates: distances from LFW photos to re-saved, shrunk and mirrored copies of
   themselves, between frames of the clip, and between two photos of one person;
5. enrolling from the clip with several video_frames / video_faces settings: time taken, and the
   distance from Miranda's still to the templates.

Usage (about 7 minutes on 2 CPU cores with the defaults):

    PYTHONPATH=. python scripts/measure_enrollment_gates.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from worker.config import load_settings
from worker.evaluation.dataset import choose_face
from worker.evaluation.lfw import read_pairs
from worker.recognition import FaceRecognizer
from worker.stream.tracker import CameraTracker
from worker.stream.video_faces import VideoFaceReader
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.vision.quality import sharpness
from worker.watchlist.enroll import Enroller, EnrollRules
from worker.watchlist.store import WatchlistStore

BLUR_SIGMAS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
FACE_WIDTHS = (80, 60, 45, 35, 30)
SHARPNESS_BINS = (0, 1, 2, 3, 4, 5, 7, 10, 15, 25, 50, np.inf)
WIDTH_BINS = (0, 35, 45, 60, 80, 100, np.inf)
SHARPNESS_GATES = (0, 1, 2, 3, 4, 5, 7, 10, 15)
SIZE_GATES = (0, 30, 35, 40, 45, 50, 60)
THRESHOLDS = (0.5, 0.6)  # watchlist.match_threshold, dlib's same-person threshold
CHUNK = 128
VIDEO_FRAMES = (30, 60, 150, 275)
VIDEO_FACES = (1, 3, 10)


def pct(values: np.ndarray, q: Sequence[float] = (5, 25, 50, 75, 95)) -> str:
    """Percentiles as 'a / b / c' (or '-' when empty)."""
    if len(values) == 0:
        return "-"
    return " / ".join(f"{v:.0f}" for v in np.percentile(values, q))


def table(header: Sequence[str], rows: list[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Faces:
    """Width, sharpness and embedding of faces (row i of each)."""

    widths: np.ndarray
    sharpness: np.ndarray
    embeddings: np.ndarray


def analyze(recognizer: FaceRecognizer, images: list[np.ndarray], boxes: list[Box]) -> Faces:
    """Align and embed one given face per image, in batches."""
    chips = Chips(recognizer)
    for image, box in zip(images, boxes, strict=True):
        chips.add(image, box)
    return chips.faces()


class Chips:
    """Aligns faces as they come and embeds them CHUNK at a time (bounded memory)."""

    def __init__(self, recognizer: FaceRecognizer) -> None:
        self.recognizer = recognizer
        self.pending: list[np.ndarray] = []
        self.widths: list[int] = []
        self.sharpness: list[np.ndarray] = []
        self.embeddings: list[np.ndarray] = []

    def add(self, image: np.ndarray, box: Box) -> None:
        self.pending.append(self.recognizer.align(image, [box])[1])
        self.widths.append(box.width)
        if len(self.pending) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            chips = np.concatenate(self.pending)
            self.sharpness.append(sharpness(chips))
            self.embeddings.append(self.recognizer.embedder.embed(chips))
            self.pending = []

    def faces(self) -> Faces:
        self._flush()
        if not self.embeddings:
            return Faces(np.zeros(0), np.zeros(0), np.zeros((0, 128), np.float32))
        return Faces(np.array(self.widths), np.concatenate(self.sharpness), np.concatenate(self.embeddings))


def centre_face(recognizer: FaceRecognizer, image: np.ndarray) -> Box | None:
    boxes = recognizer.detect([image])[0]
    return choose_face(boxes, image.shape[1], image.shape[0], "center")


def lfw_sample(recognizer: FaceRecognizer, root: Path, count: int) -> tuple[Faces, list[np.ndarray], list[Box]]:
    """The first photo of ``count`` people spread evenly over LFW's alphabetical list (faces, images, boxes)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    folders = folders[:: max(1, len(folders) // count)][:count]
    images, boxes = [], []
    for folder in tqdm(folders, desc="LFW sample", unit="image", file=sys.stderr):
        image = load_image(sorted(folder.glob("*.jpg"))[0])
        box = centre_face(recognizer, image)
        if box is not None:
            images.append(image)
            boxes.append(box)
    return analyze(recognizer, images, boxes), images, boxes


def copies(
    recognizer: FaceRecognizer, images: list[np.ndarray], boxes: list[Box], base: Faces
) -> dict[str, np.ndarray]:
    """Distance from each photo to a re-saved, a shrunk and a mirrored copy of itself."""
    found: dict[str, np.ndarray] = {}
    for label, change in (
        ("same photo, JPEG quality 75", lambda im, b: (_jpeg(im, 75), b)),
        ("same photo, 80% size", lambda im, b: (_resized(im, 0.8), b.scaled(0.8))),
        ("same photo, mirrored", lambda im, b: (np.ascontiguousarray(im[:, ::-1]), _mirrored(b, im.shape[1]))),
    ):
        changed = [change(image, box) for image, box in zip(images, boxes, strict=True)]
        faces = analyze(recognizer, [im for im, _ in changed], [b for _, b in changed])
        found[label] = np.linalg.norm(faces.embeddings - base.embeddings, axis=1)
    return found


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def _resized(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def _mirrored(box: Box, width: int) -> Box:
    return Box(width - 1 - box.right, box.top, width - 1 - box.left, box.bottom, box.score)


def stills(recognizer: FaceRecognizer, folder: Path) -> tuple[list[str], Faces]:
    """Every face of every still (the largest first in each)."""
    names, images, boxes = [], [], []
    for path in sorted(folder.iterdir()):
        image = load_image(path)
        for box in recognizer.detect([image])[0]:
            names.append(path.stem)
            images.append(image)
            boxes.append(box)
    return names, analyze(recognizer, images, boxes)


def clip_tracks(recognizer: FaceRecognizer, video: Path, frames: int) -> list[tuple[str, Faces, np.ndarray]]:
    """Every face of the clip's first ``frames`` frames, grouped by IoU track (the worker's tracker), with times."""
    tracker = CameraTracker("clip", correlation=False)
    per_track: dict[str, tuple[list[np.ndarray], list[Box], list[float]]] = {}
    with av.open(str(video)) as container:
        for index, frame in enumerate(tqdm(container.decode(video=0), desc="clip", unit="frame", file=sys.stderr)):
            if index >= frames:
                break
            image = frame.to_ndarray(format="rgb24")
            update = tracker.detected(image, float(frame.time or 0.0), recognizer.detect([image])[0])
            for track, box in update.matched:
                images, boxes, times = per_track.setdefault(track.track_id, ([], [], []))
                images.append(image)
                boxes.append(box)
                times.append(float(frame.time or 0.0))
    tracks = sorted(per_track.items(), key=lambda item: -len(item[1][1]))
    return [(tid, analyze(recognizer, images, boxes), np.array(times)) for tid, (images, boxes, times) in tracks]


def video_enrollment(
    recognizer: FaceRecognizer, video: Path, still: Path, settings: list[tuple[int, int]]
) -> list[list[object]]:
    """Enroll from the clip with several (frames, faces) settings: time, and the still's distance to the result."""
    with tempfile.TemporaryDirectory() as folder, WatchlistStore(Path(folder) / "clip.db") as store:
        probe = recognizer.analyze([load_image(still)])[0]
        probe_embedding = probe.embeddings[probe.largest()]
        rows: list[list[object]] = []
        for frames, faces in settings:
            rules = EnrollRules(video_frames=frames, video_faces=faces)
            started = time.perf_counter()
            report = Enroller(recognizer, store, rules, video_reader=VideoFaceReader(recognizer)).enroll(
                f"clip {frames} {faces}", [str(video)]
            )
            took = time.perf_counter() - started
            assert report.identity is not None, report.rejected
            templates = np.stack([t.embedding for t in store.templates(report.identity.id)])
            distances = np.linalg.norm(templates - probe_embedding, axis=1)
            summary = report.videos[0]
            spread = [f"{distances.min():.3f}", f"{np.median(distances):.3f}", f"{distances.max():.3f}"]
            rows.append(
                [frames, faces, summary.frames, f"{took:.1f}", summary.tracks[0], len(report.accepted), *spread]
            )
    return rows


@dataclass
class Probes:
    """Degraded second photos of LFW pairs: how each looks and how far it lies from the first photo."""

    level: list[str]
    same: np.ndarray
    widths: np.ndarray
    sharpness: np.ndarray
    distances: np.ndarray


def degraded_pairs(recognizer: FaceRecognizer, pairs_file: Path, images: Path, per_class: int) -> Probes:
    """Blur or shrink the second photo of each pair; boxes come from the undegraded photo, scaled."""
    pairs = read_pairs(pairs_file, images)
    chosen = [p for p in pairs if p.same][:per_class] + [p for p in pairs if not p.same][:per_class]
    levels, same, firsts = [], [], []
    chips = Chips(recognizer)
    for pair in tqdm(chosen, desc="LFW pairs", unit="pair", file=sys.stderr):
        a, b = load_image(pair.a), load_image(pair.b)
        box_a, box_b = centre_face(recognizer, a), centre_face(recognizer, b)
        if box_a is None or box_b is None:
            continue
        first = analyze(recognizer, [a], [box_a]).embeddings[0]
        variants: list[tuple[str, np.ndarray, Box]] = []
        for sigma in BLUR_SIGMAS:
            blurred = cv2.GaussianBlur(b, (0, 0), sigma) if sigma else b
            variants.append((f"blur sigma {sigma:g}", blurred, box_b))
        for width in FACE_WIDTHS:
            factor = width / box_b.width
            if factor >= 1:
                continue
            small = cv2.resize(b, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            variants.append((f"face {width} px", small, box_b.scaled(factor).clipped(small.shape[1], small.shape[0])))
        for level, image, box in variants:
            levels.append(level)
            same.append(pair.same)
            firsts.append(first)
            chips.add(image, box)
    faces = chips.faces()
    distances = np.linalg.norm(faces.embeddings - np.stack(firsts), axis=1)
    return Probes(levels, np.array(same), faces.widths, faces.sharpness, distances)


def verification_row(label: str, same: np.ndarray, distances: np.ndarray, extra: Sequence[object] = ()) -> list[object]:
    genuine, impostor = distances[same], distances[~same]
    row: list[object] = [label, *extra, len(genuine), f"{np.median(genuine):.3f}" if len(genuine) else "-"]
    for threshold in THRESHOLDS:
        row.append(f"{(genuine <= threshold).mean():.1%}" if len(genuine) else "-")
    for threshold in THRESHOLDS:
        row.append(f"{(impostor <= threshold).mean():.1%}" if len(impostor) else "-")
    return row


VERIFY_HEADER = ["same pairs", "median same distance", "TAR@0.5", "TAR@0.6", "FAR@0.5", "FAR@0.6"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--images", type=int, default=300, help="LFW people sampled for the distribution (300)")
    parser.add_argument("--pairs", type=int, default=300, help="same and different LFW pairs each (300)")
    parser.add_argument("--frames", type=int, default=275, help="frames of the Hamilton clip (all 275)")
    args = parser.parse_args()
    recognizer = FaceRecognizer(load_settings(None, {}))
    data = args.data

    lfw, lfw_images, lfw_boxes = lfw_sample(recognizer, data / "lfw" / "images", args.images)
    copied = copies(recognizer, lfw_images, lfw_boxes, lfw)
    still_names, still_faces = stills(recognizer, data / "stills")
    clip = data / "video" / "short_hamilton_clip.mp4"
    tracks = clip_tracks(recognizer, clip, args.frames)
    enrolled = video_enrollment(
        recognizer,
        clip,
        data / "stills" / "lin-manuel-miranda.png",
        [(f, 5) for f in VIDEO_FRAMES] + [(150, n) for n in VIDEO_FACES],
    )
    probes = degraded_pairs(recognizer, data / "lfw" / "pairsDevTest.txt", data / "lfw" / "images", args.pairs)

    print("## Faces as found (HOG, upsample 1, 5-point alignment)\n")
    print(
        "width in pixels, sharpness = variance of the Laplacian of the 150x150 grey chip; p5 / p25 / p50 / p75 / p95\n"
    )
    rows: list[Sequence[object]] = [
        [f"LFW, first photo of {len(lfw.widths)} people", len(lfw.widths), pct(lfw.widths), pct(lfw.sharpness)]
    ]
    for name in dict.fromkeys(still_names):
        mask = np.array([n == name for n in still_names])
        rows.append([f"still {name}", int(mask.sum()), pct(still_faces.widths[mask]), pct(still_faces.sharpness[mask])])
    # Who each track is: its faces' median distance to the nearest still face.
    for track_id, faces, _ in tracks:
        distance = np.linalg.norm(faces.embeddings[:, None, :] - still_faces.embeddings[None, :, :], axis=2)
        nearest = np.median(distance, axis=0).argmin()
        who = f"{still_names[nearest]} {np.median(distance[:, nearest]):.2f}"
        rows.append([f"clip track {track_id} (nearest still: {who})", len(faces.widths), pct(faces.widths),
                     pct(faces.sharpness)])  # fmt: skip
    print(table(["source", "faces", "width", "sharpness"], rows))

    print("\n## Verification as the second photo of an LFW pair degrades\n")
    print(f"pairsDevTest.txt, {int(probes.same.sum())} same-person and {int((~probes.same).sum())} different-person "
          "probes over all levels; distance to the undegraded first photo\n")  # fmt: skip
    rows = []
    for level in dict.fromkeys(probes.level):
        mask = np.array([lv == level for lv in probes.level])
        extra = [f"{np.median(probes.sharpness[mask]):.0f}", f"{np.median(probes.widths[mask]):.0f}"]
        rows.append(verification_row(level, probes.same[mask], probes.distances[mask], extra))
    print(table(["degradation", "median sharpness", "median width", *VERIFY_HEADER], rows))

    print("\n### By the degraded face's sharpness\n")
    rows = []
    for low, high in itertools.pairwise(SHARPNESS_BINS):
        mask = (probes.sharpness >= low) & (probes.sharpness < high)
        rows.append(verification_row(f"{low:g} - {high:g}", probes.same[mask], probes.distances[mask]))
    print(table(["sharpness", *VERIFY_HEADER], rows))

    print("\n### By the face's width (shrunk probes only)\n")
    rows = []
    shrunk = np.array([lv.startswith("face") or lv == "blur sigma 0" for lv in probes.level])
    for low, high in itertools.pairwise(WIDTH_BINS):
        mask = shrunk & (probes.widths >= low) & (probes.widths < high)
        rows.append(verification_row(f"{low:g} - {high:g} px", probes.same[mask], probes.distances[mask]))
    print(table(["width", *VERIFY_HEADER], rows))

    print("\n## Candidate gates: share of faces admitted\n")
    clip_rows = [(f"clip track {tid}", f) for tid, f, _ in tracks]
    sources = [("LFW", lfw), ("stills", still_faces), *clip_rows]
    header = ["min_sharpness", *[name for name, _ in sources], "degraded probes", *VERIFY_HEADER[2:]]
    rows = []
    for gate in SHARPNESS_GATES:
        admitted = probes.sharpness >= gate
        row: list[object] = [
            gate,
            *[f"{(f.sharpness >= gate).mean():.0%}" for _, f in sources],
            f"{admitted.mean():.0%}",
        ]
        row += verification_row("", probes.same[admitted], probes.distances[admitted])[3:]
        rows.append(row)
    print(table(header, rows))
    print()
    header = ["min_face_size", *[name for name, _ in sources], "shrunk probes", *VERIFY_HEADER[2:]]
    rows = []
    for gate in SIZE_GATES:
        admitted = shrunk & (probes.widths >= gate)
        row = [gate, *[f"{(f.widths >= gate).mean():.0%}" for _, f in sources], f"{admitted.sum() / shrunk.sum():.0%}"]
        row += verification_row("", probes.same[admitted], probes.distances[admitted])[3:]
        rows.append(row)
    print(table(header, rows))

    print("\n## Near-duplicates: distances between faces that add nothing, and between faces that do\n")
    rows = [[label, len(d), _pct3(d), f"{(d < 0.1).mean():.0%}"] for label, d in copied.items()]
    _, dominant, times = tracks[0]
    gaps = np.abs(times[:, None] - times[None, :])
    pairwise = np.linalg.norm(dominant.embeddings[:, None] - dominant.embeddings[None, :], axis=2)
    for label, mask in (
        ("clip dominant track, next frame", np.isclose(gaps, 1 / 29.97, atol=0.004)),
        ("clip dominant track, 1 s or more apart", gaps >= 1.0),
    ):
        d = pairwise[np.triu(mask, 1)]
        rows.append([label, len(d), _pct3(d), f"{(d < 0.1).mean():.0%}" if len(d) else "-"])
    genuine = probes.distances[np.array([lv == "blur sigma 0" for lv in probes.level]) & probes.same]
    rows.append(["LFW same person, another photo", len(genuine), _pct3(genuine), f"{(genuine < 0.1).mean():.0%}"])
    print(table(["pair", "pairs", "distance p5 / p50 / p95", "under 0.1"], rows))

    print("\n## Enrolling from the clip: frames analysed and faces kept\n")
    print("the still lin-manuel-miranda.png against the templates enrolled from the clip\n")
    header = ["video_frames", "video_faces", "frames read", "seconds", "dominant track faces", "enrolled",
              "still: nearest", "median", "farthest"]  # fmt: skip
    print(table(header, enrolled))
    return 0


def _pct3(values: np.ndarray) -> str:
    return " / ".join(f"{v:.3f}" for v in np.percentile(values, (5, 50, 95))) if len(values) else "-"


if __name__ == "__main__":
    raise SystemExit(main())
