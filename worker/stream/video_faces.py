"""The faces of a video's dominant track, for enrollment (``facewatch watchlist add NAME clip.mp4``).

A video is sampled, not read whole: up to ``video_frames`` frames, spread evenly over a file (by
its frame count), or over ``video_seconds`` of a live stream (rtsp://, read for at most that
long). Faces are detected on every sampled frame, a batch of frames at a time, and followed with
the worker's IoU tracker (worker.stream.tracker); each face is aligned as it is found, so only
aligned chips are kept, never frames. The dominant track is the one whose faces at least
``min_face_size`` wide have the highest summed quality (worker/vision/quality.py: size, sharpness,
pose; then the most faces, then the earliest born): the person seen longest, close and frontal
enough to enroll. Tracks are first cut wherever two consecutive faces are more than 0.6 apart:
sparse samples let IoU carry a track across a scene cut to another person at the same place on
screen. Other people's tracks are counted in the report and otherwise ignored; one person may leave
several tracks.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from worker.config import TrackingConfig
from worker.errors import VideoError
from worker.models.face_spec import EMBEDDING_SIZE
from worker.recognition import FaceRecognizer
from worker.runtime.progress import progress_bar
from worker.stream.tracker import CameraTracker
from worker.stream.urls import expand_env, redact
from worker.vision.boxes import Box
from worker.vision.quality import detector_points, face_quality
from worker.watchlist.enroll import LIVE_SCHEMES, EnrollRules, VideoFaces

log = logging.getLogger(__name__)

DETECT_BATCH = 8  # frames detected together
SAME_PERSON_DISTANCE = 0.6  # dlib's 1:1 threshold: consecutive faces of one person are closer
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
MISSED_SAMPLES = 3  # sample intervals a track survives without a face


def _open(source: str, shown: str) -> av.container.InputContainer:
    live = source.lower().startswith(LIVE_SCHEMES)
    if not live and not Path(source).is_file():
        raise VideoError(f"{shown}: no such file")
    try:
        if live:
            return av.open(source, options={"rtsp_transport": "tcp"}, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        return av.open(source)
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"{shown}: cannot open video ({redact(str(exc))})") from None


class FrameSampler:
    """Up to ``frames`` frames of a video: spread evenly over a file, or over ``seconds`` of a live stream.

    Opening happens in the constructor (VideoError, naming ``shown``, when it fails); ``expected`` is
    how many frames iterating will give at most; iterate once, then close (or use ``with``).
    """

    def __init__(self, source: str, frames: int, seconds: float, shown: str | None = None) -> None:
        self.shown = shown or redact(source)
        self.frames = frames
        self.seconds = seconds
        self.live = source.lower().startswith(LIVE_SCHEMES)
        self.container = _open(source, self.shown)
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.shown}: no video stream")
        self.stream = self.container.streams.video[0]
        rate = float(self.stream.average_rate or 25)
        # Files may start at a non-zero presentation time (the Hamilton clip at 0.85 s): count from there.
        start = self.stream.start_time
        self.start = float(start * self.stream.time_base) if start is not None and self.stream.time_base else 0.0
        if self.live:
            # A frame every (rate * seconds / frames) frames: the samples cover the whole reading time.
            self.step = max(1, math.floor(rate * seconds / frames))
            self.expected = frames
        else:
            total = self.stream.frames or round(float(self.container.duration or 0) / av.time_base * rate)
            self.step = max(1, math.ceil(total / frames)) if total else 1
            self.expected = min(frames, math.ceil(total / self.step)) if total else frames

    def __enter__(self) -> FrameSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        """(seconds from the start, RGB frame) of each sampled frame."""
        started = time.monotonic()
        sampled = 0
        try:
            for index, frame in enumerate(self.container.decode(self.stream)):
                if self.live and time.monotonic() - started > self.seconds:
                    break
                if index % self.step:
                    continue  # decoded (the codec needs every frame) but neither converted nor analysed
                at = time.monotonic() - started if self.live or frame.time is None else float(frame.time) - self.start
                yield at, frame.to_ndarray(format="rgb24")
                sampled += 1
                if sampled == self.frames:
                    break
        except av.error.FFmpegError as exc:
            if not sampled:
                raise VideoError(f"{self.shown}: decoding failed ({redact(str(exc))})") from None
            # A truncated file or a dropped stream after some frames: enroll from what was read.
            log.warning("%s: decoding stopped after %d sampled frames: %s", self.shown, sampled, redact(str(exc)))


class VideoFaceReader:
    """Reads videos for the Enroller (its VideoReader): samples, detects, tracks, keeps the dominant track."""

    def __init__(self, recognizer: FaceRecognizer, tracking: TrackingConfig | None = None, progress: bool = False):
        self.recognizer = recognizer
        self.tracking = tracking or TrackingConfig()
        self.progress = progress

    def name(self, source: str) -> str:
        """The source with any password redacted (what reports and template sources show)."""
        return redact(source)

    def _split_at_identity_changes(self, tracks: list[list]) -> list[list]:
        """Tracks cut where the person changes: sparse samples let IoU carry a track across a scene cut.

        Consecutive faces of one person lie within dlib's same-person distance (0.6); a larger step
        between two faces of a track is a different person in the same place on screen.
        """
        chips = np.stack([chip for track in tracks for _, _, chip, _ in track])
        embeddings = self.recognizer.embedder.embed(chips)  # kept with each face: enrollment needs no second pass
        segments, start = [], 0
        for track in tracks:
            vectors = embeddings[start : start + len(track)]
            with_vectors = [(*face, vector) for face, vector in zip(track, vectors, strict=True)]
            segments += _split(with_vectors, vectors, SAME_PERSON_DISTANCE)
            start += len(track)
        return segments

    def read(self, source: str, rules: EnrollRules) -> VideoFaces:
        """The dominant track's faces among up to rules.video_frames sampled frames."""
        shown = self.name(source)
        url = expand_env(source, "video URL") if source.lower().startswith(LIVE_SCHEMES) else source
        tracker = CameraTracker("enroll", self.tracking.iou_threshold, self.tracking.max_age_s, correlation=False)
        faces: dict[str, list[tuple[float, Box, np.ndarray, float]]] = {}  # (time, box, chip, quality)
        frames = 0
        last: float | None = None
        with (
            FrameSampler(url, rules.video_frames, rules.video_seconds, shown) as sampler,
            progress_bar(total=sampler.expected, desc=f"reading {shown}", unit="frame", enabled=self.progress) as bar,
        ):
            for batch in samples_batched(iter(sampler), DETECT_BATCH):
                detections = self.recognizer.detect([image for _, image in batch])
                for (at, image), boxes in zip(batch, detections, strict=True):
                    if last is not None:
                        # Sparse samples lie far apart: let a track outlive a few missed samples.
                        tracker.max_age_s = max(tracker.max_age_s, MISSED_SAMPLES * (at - last))
                    last = at
                    update = tracker.detected(image, at, boxes)
                    if boxes:
                        landmarks, chips = self.recognizer.align(image, boxes)
                        widths = np.array([box.width for box in boxes])
                        quality = face_quality(chips, landmarks, widths, detector_points(boxes)).score
                        row = {id(box): index for index, box in enumerate(boxes)}
                        for track, box in update.matched:
                            index = row[id(box)]
                            faces.setdefault(track.track_id, []).append((at, box, chips[index], float(quality[index])))
                frames += len(batch)
                bar.update(len(batch))
            bar.total = frames  # a live stream may end its reading time before `expected`
            bar.refresh()
        if not faces:
            size = self.recognizer.chip.size
            no_chips = np.zeros((0, size, size, 3), np.uint8)
            return VideoFaces(shown, frames, [], np.zeros(0), [], no_chips, np.zeros((0, EMBEDDING_SIZE), np.float32))
        segments = self._split_at_identity_changes(list(faces.values()))

        # The most good faces large enough to enroll (summed quality: size, sharpness, pose): a detector
        # that also sees an audience's small faces, or a profile close-up, must not pick that bystander.
        # Among equals the earliest-born segment wins (max keeps the first).
        def usable(segment: list) -> tuple[float, int]:
            return sum(face[3] for face in segment if face[1].width >= rules.min_face_size), len(segment)

        found = max(segments, key=usable)
        return VideoFaces(
            shown,
            frames,
            sorted((len(f) for f in segments), reverse=True),
            np.array([face[0] for face in found]),
            [face[1] for face in found],
            np.stack([face[2] for face in found]),
            np.stack([face[4] for face in found]),
        )


def _split(segment: list, embeddings: np.ndarray, max_distance: float) -> list[list]:
    """Cut a track's faces wherever a face is farther than ``max_distance`` from the one before it."""
    if len(segment) < 2:
        return [segment]
    steps = np.linalg.norm(np.diff(embeddings, axis=0), axis=1)
    cuts = [0, *(np.flatnonzero(steps > max_distance) + 1).tolist(), len(segment)]
    return [segment[start:end] for start, end in itertools.pairwise(cuts)]


def samples_batched(samples: Iterator[tuple[float, np.ndarray]], size: int) -> Iterator[list[tuple[float, np.ndarray]]]:
    """Lists of up to ``size`` consecutive samples."""
    batch: list[tuple[float, np.ndarray]] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
