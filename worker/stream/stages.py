"""The two stages of a lane, as plain objects: each is built with exactly what it needs and runs without threads.

    FaceStage  (a lane's face thread):   frame -> [checkpoint cut] -> detect (every N frames, at a scale)
                                          -> track -> landmarks + chips -> submit to the embedding batcher
    DecideStage (a lane's decide thread): FaceWork -> per-track decisions -> events -> sinks
                                          -> commit protocol steps (track born / closed, frame done)

The face stage owns its cameras' trackers; the decide stage owns their decision state. They talk
only through ``FaceWork`` values (and the control messages in worker/stream/pipeline.py), so each
can be driven by a test one call at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import cv2
import numpy as np

from worker.config import PipelineConfig, TrackingConfig
from worker.obs.metrics import Metrics
from worker.stream.commits import Commits, PartitionCheckpoints, PartitionKey
from worker.stream.decisions import Announcement, DecisionRules, FrameRef, TrackDecisions
from worker.stream.events import AnyEvent, FaceMatch
from worker.stream.frames import Frame
from worker.stream.sinks import EventSink
from worker.stream.tracker import CameraTracker, Track, TrackUpdate
from worker.stream.visitors import TrackEmbeddings, VisitorTrack
from worker.vision.boxes import Box
from worker.vision.quality import FaceQuality, detector_points, face_quality
from worker.watchlist.identify import Identification

log = logging.getLogger(__name__)

Detect = Callable[[np.ndarray], list[Box]]  # one image -> face boxes, best first
Align = Callable[[np.ndarray, Sequence[Box]], tuple[np.ndarray, np.ndarray]]  # image, boxes -> (landmarks, chips)
Submit = Callable[[np.ndarray], Future]  # chips -> Future of (embeddings, identifications)
CanVote = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (quality, widths) -> which faces may vote
SubmitVisitor = Callable[[VisitorTrack], Future]  # an unknown track -> Future of its visit events


@dataclass(frozen=True)
class FrameDecided:
    """What the decide stage saw and decided on one frame, for an observer (`facewatch annotate`, benchmarks)."""

    frame: Frame
    present: list[tuple[Track, Box]]  # every open track of the camera, at its box in this frame
    faces: dict[str, Identification | None]  # track id -> its face detected in this frame: the watchlist's
    # answer, or None when the face was too poor to vote (not embedded)
    decided: dict[str, tuple[str, str]]  # track id -> (identity id, name) the track was recognised as so far
    events: list[AnyEvent]  # the events this frame completed


FrameObserver = Callable[[FrameDecided], None]


@dataclass(frozen=True)
class EndedTrack:
    """A track that closed, why, and the Kafka offset it counts as closed at (None off Kafka)."""

    track: Track
    reason: str
    end_offset: int | None


@dataclass
class FaceWork:
    """What the face stage hands the decide stage for one frame, or for a camera's end (``frame`` None)."""

    camera_id: str
    frame: Frame | None
    matched: list[tuple[Track, Box]] = field(default_factory=list)  # tracks detected in this frame
    present: list[tuple[Track, Box]] = field(default_factory=list)  # every open track (only for an observer)
    born: list[Track] = field(default_factory=list)
    ended: list[EndedTrack] = field(default_factory=list)
    chips: np.ndarray | None = None
    quality: FaceQuality | None = None  # one row per ``matched`` face
    voting: np.ndarray | None = None  # (len(matched),) bool: the faces embedded, good enough to vote
    embeddings: Future | None = None  # of (embeddings, identifications), one row per voting face
    checkpoints: PartitionCheckpoints | None = None  # the frame's partition; None off Kafka
    forget: bool = False  # the camera was closed (its partition went away): drop its decision state after this


def scaled_detect(detect: Detect, scale: float) -> Detect:
    """``detect`` run on the image resized by ``scale``, boxes mapped back to full-frame pixels."""
    if scale == 1.0:
        return detect

    def run(image: np.ndarray) -> list[Box]:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
        height, width = image.shape[:2]
        return [box.scaled(1.0 / scale).clipped(width, height) for box in detect(small)]

    return run


@dataclass
class _CameraTracks:
    tracker: CameraTracker
    last_offset: int | None = None
    last_frame_wall: float = field(default_factory=time.monotonic)
    checkpoints: PartitionCheckpoints | None = None  # the partition of the camera's last frame
    partition: PartitionKey | None = None  # the same partition's key


class FaceStage:
    """Detection, tracking and chips for the cameras of one lane. Owns their trackers; one thread calls it."""

    def __init__(
        self,
        detect: Detect,
        align: Align,
        submit: Submit,
        pipeline: PipelineConfig,
        tracking: TrackingConfig,
        commits: Commits,
        metrics: Metrics,
        track_presence: bool = False,
        can_vote: CanVote | None = None,
    ) -> None:
        self.detect = scaled_detect(detect, pipeline.detection_scale)
        self.can_vote = can_vote
        self.align = align
        self.submit = submit
        self.detect_every = pipeline.detect_every
        self.tracking = tracking
        self.commits = commits
        self.metrics = metrics
        self.track_presence = track_presence
        self._cameras: dict[str, _CameraTracks] = {}

    def _camera(self, camera_id: str) -> _CameraTracks:
        camera = self._cameras.get(camera_id)
        if camera is None:
            t = self.tracking
            cuts = t.scene_cut_threshold if t.scene_cuts else None
            tracker = CameraTracker(camera_id, t.iou_threshold, t.max_age_s, t.correlation, scene_cut_threshold=cuts)
            camera = self._cameras[camera_id] = _CameraTracks(tracker)
        return camera

    def process(self, frame: Frame) -> FaceWork:
        """One frame of a camera, in the camera's order."""
        camera = self._camera(frame.camera_id)
        camera.last_frame_wall = time.monotonic()
        work = FaceWork(frame.camera_id, frame, checkpoints=self.commits.partition(frame.position))
        camera.checkpoints = work.checkpoints
        camera.partition = (frame.position.topic, frame.position.partition) if frame.position else None
        offset = frame.position.offset if frame.position else None
        if work.checkpoints is not None and offset is not None:
            boundary = work.checkpoints.boundary_before(camera.last_offset, offset)
            if boundary is not None:
                work.ended += [EndedTrack(t, "checkpoint", boundary - 1) for t in camera.tracker.end_all()]
            camera.last_offset = offset
        if frame.seq % self.detect_every == 0:
            update = self._detect(frame, camera, work, offset)
        else:
            with self._timed("track"):
                update = camera.tracker.followed(frame.image, frame.timestamp)
        work.matched = update.matched
        work.born = update.born
        if update.scene_cut:
            self.metrics.scene_cuts.labels(self.metrics.camera_label(frame.camera_id)).inc()
        work.ended += [EndedTrack(t, "scene_cut", offset) for t in update.cut]
        work.ended += [EndedTrack(t, "lost", offset) for t in update.ended]
        if self.track_presence:
            work.present = [(track, track.box) for track in camera.tracker.tracks]
        return work

    def _detect(self, frame: Frame, camera: _CameraTracks, work: FaceWork, offset: int | None) -> TrackUpdate:
        with self._timed("detect"):
            boxes = self.detect(frame.image)
        self.metrics.faces_detected.labels(self.metrics.camera_label(frame.camera_id)).inc(len(boxes))
        with self._timed("track"):
            update = camera.tracker.detected(frame.image, frame.timestamp, boxes, offset)
        if update.matched:
            boxes = [box for _, box in update.matched]
            widths = np.array([box.width for box in boxes])
            with self._timed("align"):
                landmarks, chips = self.align(frame.image, boxes)
                work.quality = face_quality(chips, landmarks, widths, detector_points(boxes))
            # Faces too poor to vote are tracked but never embedded: their identity would not count.
            work.voting = self.can_vote(work.quality.score, widths) if self.can_vote else np.ones(len(boxes), bool)
            if work.voting.any():
                work.chips = chips[work.voting]
                work.embeddings = self.submit(work.chips)
        return update

    def end_camera(self, camera_id: str, reason: str) -> FaceWork:
        """Close every open track of a camera (end of a file, a stale camera, shutdown)."""
        camera = self._cameras.get(camera_id)
        if camera is None:
            return FaceWork(camera_id, None)
        ended = [EndedTrack(t, reason, camera.last_offset) for t in camera.tracker.end_all()]
        # The closings go to the partition's checkpoints too: a track born there and never recorded as
        # closed would hold that partition's commits back for good.
        return FaceWork(camera_id, None, ended=ended, checkpoints=camera.checkpoints)

    def close_partitions(self, partitions: Collection[PartitionKey], reason: str) -> list[FaceWork]:
        """Close the cameras whose last frame came from these partitions (a rebalance took them away).

        Their tracks end with ``reason`` and the cameras are forgotten, so frames of theirs seen
        again, by this worker or after a replay, start from empty trackers.
        """
        closed = []
        for camera_id, camera in list(self._cameras.items()):
            if camera.partition is None or camera.partition not in partitions:
                continue
            del self._cameras[camera_id]
            tracks = camera.tracker.end_all()
            ended = [EndedTrack(t, reason, camera.last_offset) for t in tracks]
            closed.append(FaceWork(camera_id, None, ended=ended, checkpoints=camera.checkpoints, forget=True))
        return closed

    def end_stale(self, stale_after_s: float, now: float | None = None) -> list[FaceWork]:
        """Close the tracks of cameras that sent no frame for ``stale_after_s`` (wall time)."""
        now = time.monotonic() if now is None else now
        return [
            self.end_camera(camera_id, "lost")
            for camera_id, camera in self._cameras.items()
            if camera.tracker.tracks and now - camera.last_frame_wall > stale_after_s
        ]

    def end_all(self, reason: str) -> list[FaceWork]:
        """Close every camera's open tracks (shutdown)."""
        return [
            self.end_camera(camera_id, reason) for camera_id, camera in self._cameras.items() if camera.tracker.tracks
        ]

    def _timed(self, stage: str) -> _StageTimer:
        return _StageTimer(self.metrics, stage)


class _StageTimer:
    """Observes a block's duration on facewatch_stage_seconds{stage}."""

    def __init__(self, metrics: Metrics, stage: str) -> None:
        self.metrics = metrics
        self.stage = stage

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *_: object) -> None:
        self.metrics.stage_seconds.labels(self.stage).observe(time.monotonic() - self.started)


class DecideStage:
    """Decisions, events, sinks and the commit protocol's per-frame steps. Owns every camera's decision state."""

    def __init__(
        self,
        rules: DecisionRules,
        model_version: str,
        watchlist_version: int,
        sinks: Sequence[EventSink],
        metrics: Metrics,
        observer: FrameObserver | None = None,
        visitors: SubmitVisitor | None = None,
    ) -> None:
        self.rules = rules
        self.model_version = model_version
        self.watchlist_version = watchlist_version  # the latest the worker announced to this lane
        self.sinks = list(sinks)
        self.metrics = metrics
        self.observer = observer
        self._decisions: dict[str, TrackDecisions] = {}
        # With visitors on: the embeddings of each open track's faces, for the visitor stage when it ends unknown.
        self.visitors = visitors
        self._track_faces = TrackEmbeddings()

    def _camera(self, camera_id: str) -> TrackDecisions:
        decisions = self._decisions.get(camera_id)
        if decisions is None:
            decisions = self._decisions[camera_id] = TrackDecisions(camera_id, self.rules, self.model_version)
        return decisions

    def decide(self, work: FaceWork) -> list[AnyEvent]:
        """Decide on one frame's faces (or a camera's end), publish the events, then record the commit steps."""
        decisions = self._camera(work.camera_id)
        events: list[AnyEvent] = []
        unknown: list[Future] = []
        for ended in work.ended:
            event = decisions.ended(ended.track, ended.reason, self.watchlist_version)
            self.metrics.tracks_ended.labels(self.metrics.camera_label(work.camera_id), event.outcome).inc()
            events.append(event)
            if self.visitors is not None:
                track = self._track_faces.pop(
                    work.camera_id, event.track_id, event.started_at.timestamp(), event.ended_at.timestamp()
                )
                if track is not None and event.identity_id is None:
                    unknown.append(self.visitors(track))
        for future in unknown:
            try:
                events += future.result()
            except Exception:  # counted by the visitor stage; the frame's other events still go out
                log.warning("visitors: an unknown track was not counted")
        faces: dict[str, Identification | None] = {}
        if work.frame is not None:
            frame = work.frame
            where = FrameRef(frame.seq, frame.width, frame.height, frame.timestamp)
            events += [decisions.started(track, where, self.watchlist_version) for track in work.born]
            if work.matched:
                events += self._observe(work, decisions, where, faces)
            for track, box in work.matched:
                update = decisions.updated(track, box, where, self.watchlist_version)
                if update is not None:
                    events.append(update)
        if self.observer is not None and work.frame is not None:
            decided = {track.track_id: decisions.decided(track.track_id) for track, _ in work.present}
            self.observer(
                FrameDecided(
                    work.frame, work.present, faces, {k: v for k, v in decided.items() if v is not None}, events
                )
            )
        if events:
            received = work.frame.received if work.frame else time.monotonic()
            with _StageTimer(self.metrics, "publish"):
                for event in events:
                    for sink in self.sinks:
                        sink.publish(event, received)
        self._record_commit_steps(work)
        if work.forget:  # a fresh start for the camera: what a replay, or its next owner, would begin with
            self._decisions.pop(work.camera_id, None)
        return events

    def _observe(
        self, work: FaceWork, decisions: TrackDecisions, frame: FrameRef, faces: dict[str, Identification | None]
    ) -> list[FaceMatch]:
        """Count the frame's faces into their tracks' votes; ``faces`` gets each track's identification."""
        matches: list = []
        embeddings = None
        if work.embeddings is not None:
            with _StageTimer(self.metrics, "wait_embedding"):
                embeddings, matches = work.embeddings.result()
        voting = work.voting if work.voting is not None else np.ones(len(work.matched), bool)
        scores = work.quality.score.tolist() if work.quality is not None else [None] * len(work.matched)
        chips = iter(work.chips if work.chips is not None else [None] * len(matches))
        votes = iter(matches)
        rows = iter(embeddings if embeddings is not None and self.visitors is not None else [])
        events: list[FaceMatch] = []
        with _StageTimer(self.metrics, "decide"):
            for (track, box), votes_too, quality in zip(work.matched, voting, scores, strict=True):
                if not votes_too:
                    decisions.seen(track, frame.time)
                    faces[track.track_id] = None
                    continue
                match = faces[track.track_id] = next(votes)
                if self.visitors is not None:
                    self._track_faces.add(work.camera_id, track.track_id, next(rows), match.status == "match")
                event = decisions.observe(track, box, frame, match, match.watchlist_version, next(chips), quality)
                if event is not None:
                    self.metrics.matches.labels(self.metrics.camera_label(work.camera_id)).inc()
                    events.append(event)
        return events

    @staticmethod
    def _record_commit_steps(work: FaceWork) -> None:
        """Commit protocol step 2: tracks born and closed, then the frame is done (its events are with the sinks)."""
        checkpoints = work.checkpoints
        if checkpoints is None:
            return
        for track in work.born:
            if track.born_offset is not None:
                checkpoints.track_born(f"{work.camera_id}/{track.track_id}", track.born_offset)
        for ended in work.ended:
            if ended.end_offset is not None:
                checkpoints.track_closed(f"{work.camera_id}/{ended.track.track_id}", ended.end_offset)
        if work.frame is not None and work.frame.position is not None:
            checkpoints.done(work.frame.position.offset)

    def frame_failed(self, work: FaceWork) -> None:
        """A frame whose decision raised still records its commit steps, so one bad frame cannot freeze commits."""
        self._record_commit_steps(work)

    def remember(self, announcements: Sequence[Announcement]) -> None:
        """Announcements read back from the events topic (a restart or a rebalance): they count for the cooldown."""
        by_camera: dict[str, list[Announcement]] = {}
        for announcement in announcements:
            by_camera.setdefault(announcement.camera_id, []).append(announcement)
        for camera_id, seen in by_camera.items():
            self._camera(camera_id).remember(seen)

    def watchlist_changed(self, version: int, removed: Sequence[str]) -> None:
        """A new watchlist version; erase every removed identity from the decision state."""
        self.watchlist_version = version
        for identity_id in removed:
            for decisions in self._decisions.values():
                decisions.forget_identity(identity_id)
