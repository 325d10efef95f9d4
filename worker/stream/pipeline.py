"""The recognition pipeline shared by every source.

    frame -> lane (per camera, in order): [checkpoint cut] -> detect (every N frames, at a scale)
          -> track -> landmarks + chips -> embedding micro-batcher (all cameras, one forward pass)
          -> watchlist search (batched) -> lane decisions (in frame order): per-track votes
          -> events -> sinks -> frame done (Kafka: counts towards the next safe commit)

A camera always maps to the same lane, so its frames are tracked and decided in order. Each lane
has two threads: one detects, tracks and cuts chips; the other waits for the embeddings and
makes the decisions, so detection of the next frames overlaps the embedding of earlier ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import cv2
import numpy as np

from worker.config import Settings
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.stream.batcher import EmbeddingBatcher
from worker.stream.checkpoints import PartitionCheckpoints
from worker.stream.decisions import DecisionRules, Identification, TrackDecisions
from worker.stream.events import FaceMatch, TrackEnded
from worker.stream.frames import Frame, KafkaPosition
from worker.stream.sinks import EventSink
from worker.stream.tracker import CameraTracker, Track, TrackUpdate
from worker.vision.boxes import Box

log = logging.getLogger(__name__)

Matcher = Callable[[np.ndarray], list[Identification]]
CheckpointsFor = Callable[[KafkaPosition], PartitionCheckpoints | None]
FrameObserver = Callable[[Frame, list[tuple[Track, Box]]], None]  # a frame and the tracked faces in it


@dataclass
class _Camera:
    tracker: CameraTracker
    decisions: TrackDecisions
    last_offset: int | None = None
    last_frame_wall: float = field(default_factory=time.monotonic)


@dataclass
class _Ended:
    track: Track
    reason: str
    end_offset: int | None


@dataclass
class _Work:
    """What the detection thread hands the decision thread for one frame (or control message)."""

    camera_id: str
    frame: Frame | None
    matched: list[tuple[Track, Box]] = field(default_factory=list)
    present: list[tuple[Track, Box]] = field(default_factory=list)  # every open track after this frame
    born: list[Track] = field(default_factory=list)
    ended: list[_Ended] = field(default_factory=list)
    chips: np.ndarray | None = None
    embeddings: Future | None = None
    checkpoints: PartitionCheckpoints | None = None


@dataclass(frozen=True)
class _EndCamera:
    camera_id: str
    reason: str


class Lane:
    """Two threads serving the cameras hashed to this lane."""

    def __init__(self, index: int, pipeline: Pipeline) -> None:
        self.index = index
        self.pipeline = pipeline
        self.intake: queue.Queue[Frame | _EndCamera | None] = queue.Queue(maxsize=pipeline.settings.pipeline.queue_size)
        self.pending: queue.Queue[_Work | None] = queue.Queue(maxsize=4 * pipeline.settings.pipeline.queue_size)
        self.cameras: dict[str, _Camera] = {}
        self._stage_thread = threading.Thread(target=self._stage_loop, name=f"lane{index}-detect", daemon=True)
        self._decide_thread = threading.Thread(target=self._decide_loop, name=f"lane{index}-decide", daemon=True)
        self._stage_thread.start()
        self._decide_thread.start()

    # -- detection thread ---------------------------------------------------------------------

    def _camera(self, camera_id: str) -> _Camera:
        camera = self.cameras.get(camera_id)
        if camera is None:
            s = self.pipeline.settings
            tracker = CameraTracker(
                camera_id, s.tracking.iou_threshold, s.tracking.max_age_s, correlation=s.tracking.correlation
            )
            rules = DecisionRules(
                s.decisions.min_faces, s.decisions.min_vote_share, s.decisions.cooldown_s, s.events.thumbnails
            )
            camera = self.cameras[camera_id] = _Camera(
                tracker, TrackDecisions(camera_id, rules, self.pipeline.model_version)
            )
        return camera

    def _stage_loop(self) -> None:
        while True:
            item = self.intake.get()
            if item is None:
                self.pending.put(None)
                return
            try:
                work = self._end_camera(item) if isinstance(item, _EndCamera) else self._process(item)
            except Exception:  # one bad frame must not stop the lane
                log.exception("lane %d: processing a frame failed", self.index)
                self.pipeline.metrics.decode_errors.labels("processing").inc()
                work = _Work(item.camera_id, item if isinstance(item, Frame) else None)
            self.pending.put(work)

    def _end_camera(self, item: _EndCamera) -> _Work:
        camera = self.cameras.get(item.camera_id)
        ended = [_Ended(t, item.reason, camera.last_offset) for t in camera.tracker.end_all()] if camera else []
        return _Work(item.camera_id, None, ended=ended)

    def _process(self, frame: Frame) -> _Work:
        p = self.pipeline
        camera = self._camera(frame.camera_id)
        camera.last_frame_wall = time.monotonic()
        work = _Work(frame.camera_id, frame)
        offset = frame.position.offset if frame.position else None
        if frame.position is not None and p.checkpoints_for is not None:
            work.checkpoints = p.checkpoints_for(frame.position)
        if work.checkpoints is not None and offset is not None:
            boundary = work.checkpoints.boundary_before(camera.last_offset, offset)
            if boundary is not None:
                work.ended += [_Ended(t, "checkpoint", boundary - 1) for t in camera.tracker.end_all()]
            camera.last_offset = offset
        if frame.seq % p.settings.pipeline.detect_every == 0:
            started = time.monotonic()
            boxes = p.detect(frame.image)
            p.metrics.stage_seconds.labels("detect").observe(time.monotonic() - started)
            p.metrics.faces_detected.labels(frame.camera_id).inc(len(boxes))
            started = time.monotonic()
            update = camera.tracker.detected(frame.image, frame.timestamp, boxes, offset)
            p.metrics.stage_seconds.labels("track").observe(time.monotonic() - started)
            if update.matched:
                started = time.monotonic()
                _, work.chips = p.recognizer.align(frame.image, [box for _, box in update.matched])
                p.metrics.stage_seconds.labels("align").observe(time.monotonic() - started)
                work.embeddings = p.batcher.submit(work.chips)
        else:
            started = time.monotonic()
            update = camera.tracker.followed(frame.image, frame.timestamp)
            p.metrics.stage_seconds.labels("track").observe(time.monotonic() - started)
        self._take(work, update, offset)
        if p.observer is not None:
            work.present = [(track, track.box) for track in camera.tracker.tracks]
        return work

    @staticmethod
    def _take(work: _Work, update: TrackUpdate, offset: int | None) -> None:
        work.matched = update.matched
        work.born = update.born
        work.ended += [_Ended(t, "lost", offset) for t in update.ended]

    # -- decision thread ----------------------------------------------------------------------

    def _decide_loop(self) -> None:
        while True:
            work = self.pending.get()
            if work is None:
                return
            try:
                self._decide(work)
            except Exception:
                log.exception("lane %d: deciding on a frame failed", self.index)
            finally:
                if work.checkpoints is not None and work.frame is not None and work.frame.position is not None:
                    work.checkpoints.done(work.frame.position.offset)
                self.pipeline.frame_finished(work.frame)

    def _decide(self, work: _Work) -> None:
        p = self.pipeline
        camera = self.cameras.get(work.camera_id) or self._camera(work.camera_id)
        received = work.frame.received if work.frame else time.monotonic()
        events: list[FaceMatch | TrackEnded] = []
        version = p.watchlist_version()
        for ended in work.ended:
            event = camera.decisions.ended(ended.track, ended.reason, version)
            p.metrics.tracks_ended.labels(work.camera_id, "matched" if event.identity_id else "unknown").inc()
            events.append(event)
        if work.embeddings is not None and work.frame is not None:
            started = time.monotonic()
            _, matches = work.embeddings.result()
            p.metrics.stage_seconds.labels("wait_embedding").observe(time.monotonic() - started)
            started = time.monotonic()
            chips: Sequence[np.ndarray | None] = work.chips if work.chips is not None else [None] * len(matches)
            for (track, box), match, chip in zip(work.matched, matches, chips, strict=True):
                event = camera.decisions.observe(
                    track, box, work.frame.timestamp, match, getattr(match, "watchlist_version", version), chip
                )
                if event is not None:
                    p.metrics.matches.labels(work.camera_id).inc()
                    events.append(event)
            p.metrics.stage_seconds.labels("decide").observe(time.monotonic() - started)
        if p.observer is not None and work.frame is not None:
            p.observer(work.frame, work.present)
        if events:
            started = time.monotonic()
            for event in events:
                for sink in p.sinks:
                    sink.publish(event, received)
            p.metrics.stage_seconds.labels("publish").observe(time.monotonic() - started)
        if work.checkpoints is not None:
            for track in work.born:
                if track.born_offset is not None:
                    work.checkpoints.track_born(f"{work.camera_id}/{track.track_id}", track.born_offset)
            for ended in work.ended:
                if ended.end_offset is not None:
                    work.checkpoints.track_closed(f"{work.camera_id}/{ended.track.track_id}", ended.end_offset)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._stage_thread.join(max(0.0, deadline - time.monotonic()))
        self._decide_thread.join(max(0.0, deadline - time.monotonic()))
        return not (self._stage_thread.is_alive() or self._decide_thread.is_alive())


class Pipeline:
    """Lanes, the shared embedding batcher and the sinks, fed by any number of sources."""

    def __init__(
        self,
        settings: Settings,
        recognizer: FaceRecognizer,
        matcher: Matcher,
        watchlist_version: Callable[[], int],
        sinks: Sequence[EventSink],
        metrics: Metrics,
        checkpoints_for: CheckpointsFor | None = None,
        observer: FrameObserver | None = None,
    ) -> None:
        self.settings = settings
        self.observer = observer  # sees each decided frame's tracked faces (benchmarks, diagnostics)
        self.recognizer = recognizer
        self.watchlist_version = watchlist_version
        self.sinks = list(sinks)
        self.metrics = metrics
        self.checkpoints_for = checkpoints_for
        self.model_version = recognizer.embedder.model_version
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        self.batcher = EmbeddingBatcher(
            recognizer.embedder.embed,
            matcher,
            max_batch=settings.pipeline.max_batch,
            max_wait_ms=settings.pipeline.max_wait_ms,
            on_batch=self._batch_done,
        )
        _ = recognizer.detector, recognizer.landmarks  # load models before frames arrive
        self.lanes = [Lane(i, self) for i in range(settings.pipeline.lanes)]
        self._closed = False

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.embedding_batch_size.observe(size)
        self.metrics.faces_embedded.inc(size)
        self.metrics.stage_seconds.labels("embed").observe(seconds)

    def detect(self, image: np.ndarray) -> list[Box]:
        """Detection at the configured scale, boxes in full-frame pixels."""
        scale = self.settings.pipeline.detection_scale
        if scale == 1.0:
            return self.recognizer.detect([image])[0]
        small = cv2.resize(
            image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        height, width = image.shape[:2]
        return [box.scaled(1.0 / scale).clipped(width, height) for box in self.recognizer.detect([small])[0]]

    def lane_of(self, camera_id: str) -> Lane:
        return self.lanes[zlib.crc32(camera_id.encode()) % len(self.lanes)]

    def submit(self, frame: Frame) -> None:
        """Queue a frame (blocks while its lane is full: back-pressure on the source)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        self.metrics.frames_decoded.labels(frame.camera_id).inc()
        with self._in_flight_lock:
            self._in_flight += 1
        self.lane_of(frame.camera_id).intake.put(frame)

    def end_camera(self, camera_id: str, reason: str) -> None:
        """Close a camera's tracks after its queued frames (end of a file, a stale camera)."""
        self.lane_of(camera_id).intake.put(_EndCamera(camera_id, reason))

    def frame_finished(self, frame: Frame | None) -> None:
        if frame is None:
            return
        with self._in_flight_lock:
            self._in_flight -= 1
            self._in_flight_lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted frame is decided; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._in_flight_lock:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._in_flight_lock.wait(left)
        return True

    def cameras(self) -> list[tuple[str, float, int]]:
        """(camera id, monotonic time of its last frame, open tracks) for each camera seen."""
        return [
            (camera_id, camera.last_frame_wall, len(camera.tracker.tracks))
            for lane in self.lanes
            for camera_id, camera in list(lane.cameras.items())
        ]

    def close(self, timeout: float) -> bool:
        """Finish queued frames, end every track (reason shutdown), stop threads. True if all finished in time."""
        deadline = time.monotonic() + timeout
        for camera_id, _, _ in self.cameras():
            self.end_camera(camera_id, "shutdown")
        self._closed = True
        for lane in self.lanes:
            lane.intake.put(None)
        finished = all(lane.join(max(0.0, deadline - time.monotonic())) for lane in self.lanes)
        self.batcher.close()
        return finished
