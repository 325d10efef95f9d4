"""Training faces mined from the worker's own tracks on a video: a track is one person.

Tracks do not say who anyone is, but they say two things: the faces of one track are the same person,
and two tracks on screen at the same time are different people. The mining runs the worker's detector and
tracker over every frame (as `eval cluster --video` does: detection every frame, tracks end at scene cuts),
cuts both chips of every tracked face from the 68 landmarks, makes each track an identity and records, for
each pair of tracks, whether their time spans overlap (FaceSet.different). Triplet mining then takes
negatives only from overlapping tracks: two tracks at different times may well be the same person.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from worker.config import Settings
from worker.errors import FacewatchError, VideoError
from worker.models.face_spec import CHIP_SIZE
from worker.models.nn4_small2 import INPUT_SIZE
from worker.recognition import FaceRecognizer
from worker.runtime.progress import progress_bar
from worker.stream.tracker import CameraTracker
from worker.training.data import ALIGNMENT_VERSION, Aligner, FaceSet

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")


@dataclass
class _Span:
    video: str
    start: float
    end: float


def overlapping(spans: list[_Span]) -> np.ndarray:
    """(tracks, tracks) bool: True where two tracks of the same video were on screen at the same time."""
    count = len(spans)
    different = np.zeros((count, count), bool)
    for i in range(count):
        for j in range(i + 1, count):
            a, b = spans[i], spans[j]
            if a.video == b.video and a.start <= b.end and b.start <= a.end:
                different[i, j] = different[j, i] = True
    return different


def video_files(source: Path) -> list[Path]:
    """The video itself, or every video file in the folder (sorted)."""
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if found:
            return found
        raise FacewatchError(f"--from-video {source}: no video file ({', '.join(VIDEO_SUFFIXES)})")
    raise FacewatchError(f"--from-video {source}: no such file or folder")


def mine_video(recognizer: FaceRecognizer, aligner: Aligner, video: Path, batch: int = 8, progress: bool = False):
    """(small chips, large chips, track ids, spans by track id) of every tracked face of one video."""
    tracking = recognizer.settings.tracking
    cuts = tracking.scene_cut_threshold if tracking.scene_cuts else None  # as the worker: no track spans a cut
    tracker = CameraTracker(video.name, tracking.iou_threshold, tracking.max_age_s, False, scene_cut_threshold=cuts)
    small: list[np.ndarray] = []
    large: list[np.ndarray] = []
    owners: list[str] = []
    spans: dict[str, _Span] = {}
    frames: list[tuple[float, np.ndarray]] = []

    def flush() -> None:
        images = [image for _, image in frames]
        for (moment, image), boxes in zip(frames, recognizer.detect(images), strict=True):
            update = tracker.detected(image, moment, boxes)
            if not update.matched:
                continue
            chips_small, chips_large = aligner.chips(image, [box for _, box in update.matched])
            for (track, _), a, b in zip(update.matched, chips_small, chips_large, strict=True):
                key = f"{video.name}#{track.track_id}"
                span = spans.setdefault(key, _Span(str(video), moment, moment))
                span.end = moment
                small.append(a)
                large.append(b)
                owners.append(key)
        frames.clear()

    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot open video {video}: {exc}") from None
    with container, progress_bar(enabled=progress, desc=video.name, unit="frame") as bar:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append((float(frame.time or 0.0), frame.to_ndarray(format="rgb24")))
            if len(frames) == batch:
                flush()
            bar.update(1)
        flush()
    return small, large, owners, spans


def mine_videos(settings: Settings, source: Path, cache_dir: Path | None, progress: bool = False) -> FaceSet:
    """Faces of every track of every video in ``source``, a track per identity (see the module docstring)."""
    videos = video_files(source)
    key = hashlib.sha256(ALIGNMENT_VERSION.encode())
    key.update(settings.detector.model_dump_json().encode() + settings.tracking.model_dump_json().encode())
    for video in videos:
        stat = video.stat()
        key.update(json.dumps([str(video.resolve()), stat.st_size, stat.st_mtime_ns]).encode())
    path = cache_dir / f"video-{key.hexdigest()[:24]}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        return FaceSet.load(path)
    recognizer = FaceRecognizer(settings)
    aligner = Aligner(settings.models.dir, detect=False)
    small: list[np.ndarray] = []
    large: list[np.ndarray] = []
    owners: list[str] = []
    spans: dict[str, _Span] = {}
    for video in videos:
        a, b, o, s = mine_video(recognizer, aligner, video, progress=progress)
        small += a
        large += b
        owners += o
        spans.update(s)
    if not owners:
        raise FacewatchError(f"--from-video {source}: no face was tracked")
    names = sorted(spans)
    number = {name: i for i, name in enumerate(names)}
    faces = FaceSet(
        np.stack(small) if small else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8),
        np.stack(large) if large else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
        np.array([number[o] for o in owners], np.int64),
        names,
        owners,
        overlapping([spans[name] for name in names]),
    )
    log.info("mined %d faces of %d tracks from %d videos", len(faces), len(names), len(videos))
    if path is not None:
        faces.save(path)
    return faces
