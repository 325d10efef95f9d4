"""Enrollment: photos and videos of a person -> checked, de-duplicated templates in the watchlist store.

Every face passes quality gates before it becomes a template (the ``enrollment`` config section,
or the flags of ``watchlist add`` / ``import``), and every rejected photo is reported with its
reason and the flag that would admit it:

- it decodes (``unreadable``);
- it shows exactly one face (``no face``, ``N faces``), unless ``largest`` is set, in which case
  the largest face is taken;
- the face is at least ``min_face_size`` pixels wide (``face too small``);
- the aligned face is sharp enough: variance of the Laplacian of the 150x150 grey chip at least
  ``min_sharpness`` (``too blurry``);
- it is not a near-duplicate (distance under ``duplicate_distance``) of a template the identity
  already has or of another face in the same batch (``near-duplicate``).

A video (a file, or an ``rtsp://`` URL read for a bounded time) contributes the faces of its
dominant track: the face followed in most of the analysed frames. Its faces pass the same size
and sharpness gates; of those that pass, up to ``video_faces`` are taken, best first, spread over
the track's time span and no two near-duplicates, and then they meet the photos' duplicate check.
Reading and tracking a video is the stream layer's work, handed in as a ``VideoReader``.

``quality`` in [0, 1] = min(1, sharpness / 60) * min(1, face width / 150): a sharp face at the
chip's own resolution scores 1.

A folder-per-identity tree (``import_tree``) enrolls each sub-folder as one identity named after
the folder (underscores read as spaces); a name already in the watchlist gets the new faces, so
importing the same tree again adds nothing (every face is then a near-duplicate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from worker.config import EnrollmentConfig
from worker.errors import ImageError, WatchlistError
from worker.recognition import FaceRecognizer
from worker.runtime.progress import progress_bar
from worker.text import utf8_text
from worker.vision.boxes import Box
from worker.vision.image import load_image
from worker.vision.quality import sharpness
from worker.watchlist.store import Identity, WatchlistStore

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts"}
LIVE_SCHEMES = ("rtsp://", "rtsps://")
CHUNK = 16  # photos decoded and embedded together
SHARP_REFERENCE = 60.0  # sharpness at which quality stops rising (four times the gate this module once had)
# The command-line flag of each gate, named in rejections ("--min-sharpness 7 would admit it").
FLAGS = {
    "min_face_size": "--min-face-size",
    "min_sharpness": "--min-sharpness",
    "duplicate_distance": "--duplicate-distance",
    "largest": "--largest",
    "video_frames": "--frames",
    "video_faces": "--video-faces",
    "video_seconds": "--seconds",
}

_DEFAULTS = EnrollmentConfig()


@dataclass(frozen=True)
class EnrollRules:
    """Quality gates and video sampling; the defaults are those of the ``enrollment`` config section."""

    min_face_size: int = _DEFAULTS.min_face_size
    min_sharpness: float = _DEFAULTS.min_sharpness
    duplicate_distance: float = _DEFAULTS.duplicate_distance
    largest: bool = _DEFAULTS.largest
    video_frames: int = _DEFAULTS.video_frames
    video_faces: int = _DEFAULTS.video_faces
    video_seconds: float = _DEFAULTS.video_seconds

    @classmethod
    def from_config(cls, config: EnrollmentConfig) -> EnrollRules:
        """The rules of an ``enrollment`` config section (flags already folded in by load_settings)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class Accepted:
    path: str  # as shown and stored: bytes that are not UTF-8 escaped (worker/text.py)
    template_id: int
    quality: float
    box: Box

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", utf8_text(self.path))


@dataclass(frozen=True)
class Rejected:
    """A photo or video (or one face of a video) that was not enrolled; ``admit``: the flags that would admit it."""

    path: str  # as shown: bytes that are not UTF-8 escaped (worker/text.py)
    reason: str
    admit: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", utf8_text(self.path))


@dataclass(frozen=True)
class VideoFaces:
    """What a video reader found: the dominant track's faces (row i of each belongs to boxes[i])."""

    source: str  # how the video may be shown and stored: passwords redacted
    frames: int  # frames analysed
    tracks: list[int]  # faces per track, most first; tracks[0] is the dominant track's
    times: np.ndarray  # (N,) seconds from the start of the video
    boxes: list[Box]
    chips: np.ndarray  # (N, 150, 150, 3) uint8 aligned faces
    embeddings: np.ndarray  # (N, 128) float32, the reader's embeddings of the chips


class VideoReader(Protocol):
    """Reads a video file or live stream and tracks its faces (worker.stream.video_faces implements it)."""

    def name(self, source: str) -> str:
        """How ``source`` may be shown and stored (passwords redacted)."""
        ...

    def read(self, source: str, rules: EnrollRules) -> VideoFaces:
        """The dominant track's faces of up to rules.video_frames frames; raises ImageError when unreadable."""
        ...


@dataclass(frozen=True)
class VideoSummary:
    """How one video was read: frames analysed, faces per track, the dominant track's time span (seconds)
    and how many of its faces passed the gates."""

    source: str
    frames: int
    tracks: list[int]
    start: float
    end: float
    usable: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "video": self.source,
            "frames": self.frames,
            "tracks": self.tracks,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "usable": self.usable,
        }


@dataclass
class EnrollReport:
    """What one enrollment did: the identity (None if nothing was accepted for a new name)."""

    name: str
    identity: Identity | None
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    videos: list[VideoSummary] = field(default_factory=list)
    # Other identities a new template is within the match threshold of (filled by the caller that knows it).
    similar: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity": self.identity.id if self.identity else None,
            "accepted": [
                {"image": a.path, "template": a.template_id, "quality": round(a.quality, 3)} for a in self.accepted
            ],
            "rejected": [{"image": r.path, "reason": r.reason, "admit": r.admit} for r in self.rejected],
            "videos": [v.as_dict() for v in self.videos],
            "similar": self.similar,
        }


@dataclass(frozen=True)
class _Candidate:
    """A face that passed the size and sharpness gates, waiting for the duplicate check."""

    path: str
    box: Box
    embedding: np.ndarray
    quality: float


def quality(widths: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """Quality in [0, 1] of faces of these widths and chip sharpness."""
    return np.minimum(1.0, sharp / SHARP_REFERENCE) * np.minimum(1.0, widths / 150.0)


def is_video(source: str | Path) -> bool:
    """A live stream URL, or a file with a video extension."""
    text = str(source)
    return text.lower().startswith(LIVE_SCHEMES) or Path(text).suffix.lower() in VIDEO_SUFFIXES


def _down(value: float, digits: int) -> float:
    """``value`` rounded down, so the figure shown is also a gate setting that admits it."""
    scale = 10**digits
    return math.floor(value * scale) / scale


def _shown_sharpness(value: float) -> float:
    return _down(value, 0 if value >= 10 else 1)


def gate_failures(rules: EnrollRules, width: int, sharp: float) -> tuple[list[str], list[str]]:
    """Why a face of this width and sharpness fails the gates, and the flags that would admit it."""
    reasons, flags = [], []
    if width < rules.min_face_size:
        reasons.append(f"face too small ({width} px wide, minimum {rules.min_face_size})")
        flags.append(f"{FLAGS['min_face_size']} {width}")
    if sharp < rules.min_sharpness:
        shown = _shown_sharpness(sharp)
        reasons.append(f"too blurry (sharpness {shown:g}, minimum {rules.min_sharpness:g})")
        flags.append(f"{FLAGS['min_sharpness']} {shown:g}")
    return reasons, flags


def _rejection(path: str, reasons: list[str], flags: list[str], prefix: str = "") -> Rejected:
    admit = " ".join(flags) or None
    reason = prefix + "; ".join(reasons) + (f": {admit} would admit it" if admit else "")
    return Rejected(path, reason, admit)


def spread_best(
    times: np.ndarray, ranking: np.ndarray, embeddings: np.ndarray, count: int, min_distance: float
) -> list[int]:
    """Up to ``count`` indices of faces, taken in ``ranking`` order (best first), spread over time, no
    two near-duplicates.

    Greedy: a face is taken when it lies at least (time span) / (2 * count) from every face taken so
    far, and at least ``min_distance`` from each of them in embedding space.
    """
    if len(times) == 0:
        return []
    gap = float(times.max() - times.min()) / (2 * count)
    taken: list[int] = []
    for index in ranking:
        if len(taken) == count:
            break
        if taken:
            if np.abs(times[taken] - times[index]).min() < gap:
                continue
            if np.linalg.norm(embeddings[taken] - embeddings[index], axis=1).min() < min_distance:
                continue
        taken.append(int(index))
    return taken


class Enroller:
    """Enrolls photos and videos into a store, with the recognizer's detector, landmarks and embedder."""

    def __init__(
        self,
        recognizer: FaceRecognizer,
        store: WatchlistStore,
        rules: EnrollRules | None = None,
        progress: bool = False,
        video_reader: VideoReader | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.store = store
        self.rules = rules or EnrollRules()
        self.progress = progress
        self.video_reader = video_reader

    def _photo_candidates(self, paths: Sequence[str], bar: tqdm) -> tuple[list[_Candidate], list[Rejected]]:
        """The photos' faces that pass the size and sharpness gates, and the rejections."""
        found: list[_Candidate] = []
        rejected: list[Rejected] = []
        for start in range(0, len(paths), CHUNK):
            names, images = [], []
            for path in paths[start : start + CHUNK]:
                try:
                    images.append(load_image(path, self.recognizer.settings.images.max_pixels))
                    names.append(path)
                except ImageError as exc:
                    rejected.append(Rejected(path, f"unreadable: {exc}"))
            chosen: list[tuple[str, Box, np.ndarray]] = []
            for path, image, boxes in zip(names, images, self.recognizer.detect(images) if images else [], strict=True):
                if not boxes:
                    rejected.append(Rejected(path, "no face"))
                elif len(boxes) > 1 and not self.rules.largest:
                    flag = FLAGS["largest"]
                    reason = f"{len(boxes)} faces (enroll a photo of one person): {flag} would take the largest"
                    rejected.append(Rejected(path, reason, flag))
                else:
                    box = max(boxes, key=lambda b: b.area)
                    chosen.append((path, box, self.recognizer.align(image, [box])[1]))
            bar.update(min(CHUNK, len(paths) - start))
            if not chosen:
                continue
            chips = np.concatenate([chip for _, _, chip in chosen])
            widths = np.array([box.width for _, box, _ in chosen])
            sharp = sharpness(chips)
            passing = []
            for row, ((path, box, _), value) in enumerate(zip(chosen, sharp, strict=True)):
                reasons, flags = gate_failures(self.rules, box.width, float(value))
                if reasons:
                    rejected.append(_rejection(path, reasons, flags))
                else:
                    passing.append(row)
            if not passing:
                continue
            embeddings = self.recognizer.embedder.embed(chips[passing])  # one forward pass per chunk
            scores = quality(widths[passing], sharp[passing])
            for row, embedding, score in zip(passing, embeddings, scores, strict=True):
                found.append(_Candidate(chosen[row][0], chosen[row][1], embedding, float(score)))
        return found, rejected

    def _video_candidates(self, source: str) -> tuple[list[_Candidate], list[Rejected], VideoSummary | None]:
        """The best faces of a video's dominant track that pass the size and sharpness gates."""
        if self.video_reader is None:
            return [], [Rejected(source, "videos are not read here (facewatch watchlist add reads them)")], None
        try:
            video = self.video_reader.read(source, self.rules)
        except ImageError as exc:
            return [], [Rejected(self.video_reader.name(source), f"unreadable: {exc}")], None
        if not video.boxes:
            summary = VideoSummary(video.source, video.frames, video.tracks, 0.0, 0.0, 0)
            return [], [Rejected(video.source, f"no face in {video.frames} frames")], summary
        widths = np.array([box.width for box in video.boxes])
        sharp = sharpness(video.chips)
        scores = quality(widths, sharp)
        passing = np.flatnonzero((widths >= self.rules.min_face_size) & (sharp >= self.rules.min_sharpness))
        start, end = float(video.times.min()), float(video.times.max())
        summary = VideoSummary(video.source, video.frames, video.tracks, start, end, len(passing))
        if not len(passing):
            # Say what would admit the track's best face: the sharpest among those wide enough, else the widest.
            wide = np.flatnonzero(widths >= self.rules.min_face_size)
            best = int(wide[sharp[wide].argmax()]) if len(wide) else int(widths.argmax())
            reasons, flags = gate_failures(self.rules, int(widths[best]), float(sharp[best]))
            prefix = f"none of the {len(widths)} faces of its main track passes the gates; the best: "
            return [], [_rejection(video.source, reasons, flags, prefix)], summary
        embeddings = video.embeddings[passing]
        # Best quality first, then the sharper: quality saturates for sharp faces of equal width.
        ranking = np.lexsort((-sharp[passing], -scores[passing]))
        picked = spread_best(
            video.times[passing], ranking, embeddings, self.rules.video_faces, self.rules.duplicate_distance
        )
        candidates = [
            _Candidate(
                f"{video.source}#t={video.times[passing[i]]:.2f}",
                video.boxes[passing[i]],
                embeddings[i],
                float(scores[passing[i]]),
            )
            for i in picked
        ]
        return candidates, [], summary

    def enroll(
        self,
        name: str,
        paths: Sequence[str | Path],
        metadata: dict[str, Any] | None = None,
        identity_id: str | None = None,
    ) -> EnrollReport:
        """Enroll photos and videos as ``name``: a new identity (with ``identity_id`` if given, else a new
        UUID), or, when ``identity_id`` names an existing identity, more faces of that one."""
        existing = self.store.find_identity(identity_id) if identity_id else None
        report = EnrollReport(utf8_text(name) if existing is None else existing.name, existing)
        photos = [str(p) for p in paths if not is_video(p)]
        videos = [str(p) for p in paths if is_video(p)]
        candidates: list[_Candidate] = []
        if photos:
            with progress_bar(
                total=len(photos), desc=f"enrolling {report.name}", unit="photo", enabled=self.progress
            ) as bar:
                candidates, report.rejected = self._photo_candidates(photos, bar)
        for video in videos:
            found, rejected, summary = self._video_candidates(video)
            candidates += found
            report.rejected += rejected
            if summary is not None:
                report.videos.append(summary)
        kept = self._without_duplicates(existing, candidates, report)
        if not kept:
            return report
        embeddings = np.stack([c.embedding for c in kept])
        sources = [c.path for c in kept]
        qualities = [c.quality for c in kept]
        model_version = self.recognizer.embedder.model_version
        if existing is None:
            # Identity and templates in one transaction: a crash never leaves a person without faces.
            report.identity, ids = self.store.add_identity_with_templates(
                name, embeddings, metadata, identity_id, sources, qualities, model_version
            )
        else:
            ids = self.store.add_templates(existing.id, embeddings, sources, qualities, model_version)
        report.accepted = [Accepted(c.path, tid, c.quality, c.box) for c, tid in zip(kept, ids, strict=True)]
        return report

    def _without_duplicates(
        self, identity: Identity | None, candidates: list[_Candidate], report: EnrollReport
    ) -> list[_Candidate]:
        known = [t.embedding for t in self.store.templates(identity.id)] if identity else []
        kept: list[_Candidate] = []
        # Best faces first, so the sharper of two near-identical photos is the one kept.
        for candidate in sorted(candidates, key=lambda c: -c.quality):
            others = np.array(known + [k.embedding for k in kept], np.float32).reshape(-1, len(candidate.embedding))
            if len(others):
                nearest = float(np.linalg.norm(others - candidate.embedding, axis=1).min())
                if nearest < self.rules.duplicate_distance:
                    shown = _down(nearest, 3)
                    flag = f"{FLAGS['duplicate_distance']} {shown:g}"
                    reason = f"near-duplicate (distance {shown:.3f}): {flag} would admit it"
                    report.rejected.append(Rejected(candidate.path, reason, flag))
                    continue
            kept.append(candidate)
        return kept

    def import_tree(self, root: str | Path) -> list[EnrollReport]:
        """Enroll each sub-folder of ``root`` (photos and videos) as one identity named after it."""
        root = Path(root)
        if not root.is_dir():
            raise WatchlistError(f"{root} is not a folder")
        by_name = {identity.name: identity for identity in self.store.list_identities()}
        reports = []
        stray = sorted(p for p in root.iterdir() if p.is_file())
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise WatchlistError(f"{root} has no sub-folders: expected one folder of photos per person")
        media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
        for folder in progress_bar(folders, desc="importing identities", unit="person", enabled=self.progress):
            name = utf8_text(folder.name.replace("_", " "))
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in media)
            skipped = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in media)
            known = by_name.get(name)
            report = self.enroll(name, files, identity_id=known.id if known else None)
            report.rejected += [Rejected(str(p), "not a photo or video (by its extension)") for p in skipped]
            if not files:
                report.rejected.append(Rejected(str(folder), "folder has no photos"))
            reports.append(report)
        if stray:
            reports.append(
                EnrollReport("(root)", None, rejected=[Rejected(str(p), "not in a person's folder") for p in stray])
            )
        return reports
