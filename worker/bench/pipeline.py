"""`facewatch bench pipeline`: the whole job on one video, facewatch beside the face_recognition library.

Both sides get the same video, decoded the same way (PyAV, RGB), and the same enrolled photos
(one per person, named after the file). The peer does what its documentation shows: on every
frame ``face_locations`` (HOG, upsampled once), ``face_encodings`` and ``compare_faces``
(tolerance 0.6), naming the nearest enrolled face among those that compare true. facewatch runs
its streaming pipeline with the given settings (detector, detect-every-N with tracking, micro-batched
embedding, watchlist search, per-track decisions).

What is compared: frames per second and faces per second over the whole video (decoding
included), and, per enrolled name, the frames in which that name was matched. For the peer a
frame counts when one of its faces was matched to the name. For facewatch a frame counts when
it holds a tracked face whose track was recognised as the name (its FaceMatch, or its TrackEnded
when the re-alert cooldown held the FaceMatch back): the decision is per track, so every frame of
the track carries it. Latency: for facewatch, from a frame entering the
worker to the delivery of the event it completed; for the peer, from a frame being decoded to its
matches being known.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from worker.bench.peers import import_face_recognition
from worker.config import Settings
from worker.errors import FacewatchError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.obs.metrics import Metrics
from worker.stream.events import AnyEvent, FaceMatch, TrackEnded
from worker.stream.frames import Frame
from worker.stream.sinks import EventSink
from worker.stream.stages import FrameDecided
from worker.vision.image import load_image

log = logging.getLogger(__name__)
PEER_TOLERANCE = 0.6  # face_recognition's documented default


@dataclass
class PipelineResult:
    """One side's figures."""

    impl: str
    frames: int
    seconds: float
    faces: int
    matched_frames: dict[str, int]
    false_alarms: int = 0  # facewatch: FaceMatch events naming a distractor; peer: frames matching one
    latencies_s: list[float] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # total time spent in each stage
    rechecked: int | None = None  # facewatch: faces embedded again in fp32 (close calls of a lowered search)

    def row(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_s) * 1000.0 if self.latencies_s else np.array([np.nan])
        return {
            "bench": "pipeline",
            "impl": self.impl,
            "frames": self.frames,
            "seconds": round(self.seconds, 2),
            "fps": round(self.frames / self.seconds, 2) if self.seconds else 0.0,
            "faces_per_s": round(self.faces / self.seconds, 2) if self.seconds else 0.0,
            "matched_frames": dict(sorted(self.matched_frames.items())),
            "false_alarms": self.false_alarms,
            "rechecked": self.rechecked,
            "latency_p50_ms": _rounded(np.percentile(latencies, 50)),
            "latency_p95_ms": _rounded(np.percentile(latencies, 95)),
            "stage_ms_per_frame": {
                stage: round(1000.0 * seconds / max(1, self.frames), 2) for stage, seconds in self.stage_seconds.items()
            },
        }


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 1)


def video_frames(path: Path, limit: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, presentation time in s, RGB frame) for the first ``limit`` frames of a video."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise FacewatchError(f"cannot open video {path}: {exc}") from None
    with container:
        for index, frame in enumerate(container.decode(video=0)):
            if limit is not None and index >= limit:
                return
            yield index, float(frame.time or 0.0), frame.to_ndarray(format="rgb24")


def enrolled_names(photos: Sequence[Path]) -> dict[str, Path]:
    """Name (the file's stem) -> photo; each photo shows the one person to enroll."""
    names: dict[str, Path] = {}
    for photo in photos:
        if not photo.is_file():
            raise FacewatchError(f"enrollment photo {photo} does not exist")
        if photo.stem in names:
            raise FacewatchError(f"two enrollment photos are named {photo.stem!r}")
        names[photo.stem] = photo
    if not names:
        raise FacewatchError("give at least one photo to enroll (--enroll PHOTO ...)")
    return names


# -- facewatch ---------------------------------------------------------------------------------


class _MemorySink(EventSink):
    """Keeps events and their frame-to-event latency in memory."""

    name = "memory"

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.events: list[AnyEvent] = []
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def publish(self, event: AnyEvent, frame_received: float) -> None:
        with self._lock:
            self.events.append(event)
            self.latencies.append(time.monotonic() - frame_received)
        self._delivered(event, frame_received)

    def flush(self, timeout: float = 30.0) -> bool:
        return True


@dataclass(frozen=True)
class Distractors:
    """People enrolled besides the named photos, none of whom is in the video: any match to them is false."""

    names: list[str]
    embeddings: np.ndarray  # (N, EMBEDDING_SIZE), from facewatch's embedder (the same network as the peer's)


def load_distractors(folder: Path, count: int, settings: Settings, progress: bool = True) -> Distractors:
    """The first photo of each of the first ``count`` people of a folder-per-person tree (e.g. LFW)."""
    from worker.evaluation.cache import cached_embed
    from worker.evaluation.dataset import DatasetEmbedder, first_people
    from worker.recognition import FaceRecognizer

    people = first_people(folder, count)
    embedder = DatasetEmbedder(FaceRecognizer(settings), flip_average=False, progress=progress)
    # Cached (worker/evaluation/cache.py): repeated benchmark runs embed the distractors once.
    result = cached_embed(embedder, [photos[0] for photos in people], folder, description="distractor photos")
    keep = np.isfinite(result.embeddings).all(axis=1)
    names = [f"distractor:{photos[0].parent.name}" for photos, k in zip(people, keep, strict=True) if k]
    return Distractors(names, result.embeddings[keep])


NO_DISTRACTORS = Distractors([], np.zeros((0, EMBEDDING_SIZE), np.float32))


def run_facewatch(
    video: Path,
    photos: dict[str, Path],
    settings: Settings,
    limit: int | None,
    distractors: Distractors = NO_DISTRACTORS,
) -> PipelineResult:
    """The streaming pipeline on the video as one camera; models loaded and photos enrolled before timing."""
    from worker.recognition import FaceRecognizer
    from worker.stream.pipeline import Pipeline
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.live import Watchlist
    from worker.watchlist.store import WatchlistStore

    with tempfile.TemporaryDirectory(prefix="facewatch-bench-") as folder:
        settings = settings.model_copy(deep=True)
        settings.watchlist.store = Path(folder) / "watchlist.db"
        settings.watchlist.index_path = None
        recognizer = FaceRecognizer(settings)
        with WatchlistStore.from_config(settings.watchlist) as store:
            enroller = Enroller(recognizer, store, EnrollRules(largest=True, min_face_size=1))
            for name, photo in photos.items():
                if not enroller.enroll(name, [photo]).accepted:
                    raise FacewatchError(f"facewatch found no usable face in {photo}")
            for name, vector in zip(distractors.names, distractors.embeddings, strict=True):
                store.add_identity_with_templates(name, vector[None, :])
        metrics = Metrics()
        watchlist = Watchlist(settings, recognizer.embedder.model_version, metrics)
        sink = _MemorySink(metrics)
        tracks_in_frame: dict[int, list[str]] = {}

        def observe(seen: FrameDecided) -> None:
            tracks_in_frame[seen.frame.seq] = [track.track_id for track, _ in seen.present]

        pipeline = Pipeline.from_settings(
            settings,
            recognizer,
            watchlist,
            [sink],
            metrics,
            observer=observe,
        )
        frames = 0
        started = time.perf_counter()
        for index, pts, image in video_frames(video, limit):
            pipeline.submit(Frame("bench", index, pts, image))
            frames += 1
        pipeline.end_camera("bench", "end_of_stream")
        pipeline.wait_idle(3600)
        seconds = time.perf_counter() - started
        pipeline.close(60)
        watchlist.close()
        faces = int(metrics.registry.get_sample_value("facewatch_faces_embedded_total") or 0)
        rechecked = int(metrics.registry.get_sample_value("facewatch_faces_rechecked_total") or 0)
        stages = _stage_totals(metrics)

    # A track counts as recognised when it was announced (FaceMatch) or, within the re-alert
    # cooldown, ended as that identity (TrackEnded names who the track was).
    identity_of_track = {
        e.track_id: e.identity_name for e in sink.events if isinstance(e, FaceMatch | TrackEnded) and e.identity_name
    }
    matched = {name: 0 for name in photos}
    for track_ids in tracks_in_frame.values():
        for name in {identity_of_track[t] for t in track_ids if t in identity_of_track} & matched.keys():
            matched[name] += 1
    latencies = [lat for e, lat in zip(sink.events, sink.latencies, strict=True) if isinstance(e, FaceMatch)]
    false_alarms = sum(1 for e in sink.events if isinstance(e, FaceMatch) and e.identity_name not in photos)
    return PipelineResult("facewatch", frames, seconds, faces, matched, false_alarms, latencies, stages, rechecked)


def _stage_totals(metrics: Metrics) -> dict[str, float]:
    """Seconds spent per pipeline stage, from the stage histogram's sums."""
    totals: dict[str, float] = {}
    for family in metrics.stage_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                totals[sample.labels["stage"]] = sample.value
    return totals


# -- face_recognition --------------------------------------------------------------------------


def run_face_recognition(
    video: Path,
    photos: dict[str, Path],
    model_dir: Path | None,
    limit: int | None,
    distractors: Distractors = NO_DISTRACTORS,
) -> PipelineResult:
    """The peer's documented loop over every frame; enrollment before timing."""
    fr = import_face_recognition(model_dir)
    names, known = [], []
    for name, photo in photos.items():
        image = load_image(photo)
        locations = fr.face_locations(image)
        if not locations:
            raise FacewatchError(f"face_recognition found no face in {photo}")
        largest = max(locations, key=lambda box: (box[2] - box[0]) * (box[1] - box[3]))
        known.append(fr.face_encodings(image, [largest])[0])
        names.append(name)
    known += list(distractors.embeddings.astype(np.float64))
    names += distractors.names
    matched = {name: 0 for name in photos}
    false_alarms = 0
    latencies: list[float] = []
    frames = faces = 0
    started = finished_at = time.perf_counter()
    stages = {"decode": 0.0, "detect": 0.0, "landmarks+embed": 0.0, "compare": 0.0}
    for _, _, image in video_frames(video, limit):
        decoded_at = time.perf_counter()
        stages["decode"] += decoded_at - finished_at  # since the previous frame was done
        locations = fr.face_locations(image)
        detected_at = time.perf_counter()
        encodings = fr.face_encodings(image, locations)
        embedded_at = time.perf_counter()
        stages["detect"] += detected_at - decoded_at
        stages["landmarks+embed"] += embedded_at - detected_at
        in_frame = set()
        for encoding in encodings:
            hits = fr.compare_faces(known, encoding, tolerance=PEER_TOLERANCE)
            if any(hits):
                distances = fr.face_distance(known, encoding)
                best = min((d, i) for i, d in enumerate(distances) if hits[i])[1]
                in_frame.add(names[best])
        for name in in_frame & matched.keys():
            matched[name] += 1
        false_alarms += bool(in_frame - matched.keys())
        finished_at = time.perf_counter()
        stages["compare"] += finished_at - embedded_at
        latencies.append(finished_at - decoded_at)
        frames += 1
        faces += len(encodings)
    seconds = time.perf_counter() - started
    return PipelineResult("face_recognition", frames, seconds, faces, matched, false_alarms, latencies, stages)


def run_pipeline_bench(
    video: Path,
    photos: Sequence[Path],
    settings: Settings,
    limit: int | None = None,
    peer: bool = True,
    distractors: Distractors = NO_DISTRACTORS,
) -> list[dict[str, Any]]:
    """Rows for facewatch and (unless ``peer`` is False) face_recognition, in that order."""
    if not video.is_file():
        raise FacewatchError(f"video {video} does not exist")
    named = enrolled_names(photos)
    rows = [run_facewatch(video, named, settings, limit, distractors).row()]
    if peer:
        rows.append(run_face_recognition(video, named, settings.models.dir, limit, distractors).row())
    return rows
