"""The recognition pipeline shared by every source: lanes of two threads each, and one embedding batcher.

    frame -> lane (per camera, in order)
          -> face thread:   FaceStage   [checkpoint cut] -> [scene cut] -> detect -> track -> chips -> submit
          -> batcher thread: one forward pass for the chips of all cameras, one watchlist search
                             (fp32 again for the faces a lowered precision could decide otherwise)
          -> decide thread: DecideStage per-track votes -> events -> sinks -> commit steps -> frame done

A camera always maps to the same lane, so its frames are tracked and decided in order; detection
of the next frames overlaps the embedding and decision of earlier ones. A camera seen for the first
time goes to the lane that serves the fewest cameras: a hash of the id put cam-00 to cam-03 all on
one of two lanes, which then did the work of four cameras while the other idled (docs/benchmarks.md,
"Streams per worker"). The stages are plain
objects (worker/stream/stages.py); a lane holds only queues and threads.

Every piece of mutable state has one owner. Nothing else writes it; others reach it with a
message through the owner's queue:

state                                   owner (the only writer)            others reach it by
--------------------------------------  ---------------------------------  ------------------------------------
a camera's tracker (and its scene-cut   its lane's face thread             EndCamera, ClosePartitions (a
  test's last frame), last offset,        (FaceStage)                        rebalance took them) via the lane's
  last frame time                                                            intake; shutdown (None) via intake
a camera's decision state (votes,       its lane's decide thread           WatchlistChanged (reload, erasure),
  announcements, cooldowns), the          (DecideStage)                      CooldownsRead (announcements read
  watchlist version for events                                               back after a restart or rebalance)
                                                                             via intake, passed on in frame order;
                                                                             a closed camera's is dropped by the
                                                                             FaceWork that ends its tracks
chips waiting for a forward pass        the batcher thread                 submit() -> Future
the watchlist's store and index         the main thread (Watchlist.follow) the batcher searches the index,
                                                                             which syncs under its own lock
visitors: centroid index, open visits,  the visitor thread (VisitorStage)  submit(VisitorTrack) -> Future of visit
  the visitor store's writes (its                                            events (decide threads); delivery
  outbox of visit events included)                                           confirmations of the events it sent
                                                                             itself (sinks' threads); the CLI's
                                                                             store changes, applied before each
                                                                             write (worker/stream/visitors.py)
an open track's face embeddings         its lane's decide thread           (none: dropped when the track ends)
  (visitors only)
partition checkpoints                   KafkaCommits, behind its lock      delivered (source thread), partition
                                                                             lookup (face), born/closed/done
                                                                             (decide), commit (source thread, or
                                                                             the revoke thread while the source
                                                                             thread waits in its poll)
failed sends awaiting a re-send         each KafkaSender, behind its lock  errbacks (Kafka's I/O thread),
                                                                             flush (the committing thread; the
                                                                             main loop when only cameras feed
                                                                             the worker, runner.py)
frames in flight                        the Pipeline, behind a condition   submit (sources), frame done (decide)
which lane serves a camera              the Pipeline, behind a lock        lane_of (sources, control messages)

A rebalance that takes partitions away closes their cameras before anything is committed: the
Kafka source sends ClosePartitions to every lane and waits until each decide thread has passed it,
so every frame queued before it is decided, the cameras' tracks have ended and their events are
with the sinks; only then does the commit protocol flush and commit (worker/stream/sources/kafka.py).

An erasure thus reaches a lane's decision state after the frames queued before it, and never
races a new track: the old bug of the main loop mutating decision state while a decide thread
added tracks is gone by construction.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.config import PipelineConfig, Settings, TrackingConfig
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.runtime.device import configure_threads, pipeline_torch_threads
from worker.stream.batcher import EmbeddingBatcher
from worker.stream.commits import Commits, PartitionKey
from worker.stream.decisions import Announcement, DecisionRules
from worker.stream.frames import Frame
from worker.stream.search import CheckedSearch, Search
from worker.stream.sinks import EventSink
from worker.stream.stages import Align, DecideStage, Detect, FaceStage, FaceWork, FrameObserver, SubmitVisitor
from worker.vision.boxes import Box
from worker.watchlist.live import Watchlist

log = logging.getLogger(__name__)

STALE_CHECK_S = 0.5  # how often an idle lane looks for silent cameras


@dataclass(frozen=True)
class EndCamera:
    """Control message: close a camera's tracks after its queued frames."""

    camera_id: str
    reason: str


@dataclass(frozen=True)
class WatchlistChanged:
    """Control message: the watchlist is at ``version``; ``removed`` identities must be erased everywhere."""

    version: int
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class CooldownsRead:
    """Control message: announcements read back from the events topic, for the lane's cameras' cooldowns."""

    announcements: tuple[Announcement, ...]


@dataclass(frozen=True)
class ClosePartitions:
    """Control message: close the cameras of these partitions after their queued frames (a rebalance took them).

    ``reason`` is the track_ended reason of their open tracks.
    The decide thread sets ``closed`` when it passes the message: everything before it is decided.
    """

    partitions: frozenset[PartitionKey]
    reason: str
    closed: threading.Event = field(default_factory=threading.Event, compare=False)


Control = WatchlistChanged | CooldownsRead | ClosePartitions  # passed from the face thread to the decide thread
Intake = Frame | EndCamera | Control | None  # None: shut down
Pending = FaceWork | Control | None


class Lane:
    """Two threads serving the cameras hashed to this lane: one runs the face stage, one the decide stage."""

    def __init__(
        self,
        index: int,
        faces: FaceStage,
        decide: DecideStage,
        queue_size: int,
        stale_after_s: float,
        frame_done: Callable[[Frame | None], None],
        metrics: Metrics,
    ) -> None:
        self.index = index
        self.faces = faces
        self.decide = decide
        self.stale_after_s = stale_after_s
        self._frame_done = frame_done
        self._metrics = metrics
        self.intake: queue.Queue[Intake] = queue.Queue(maxsize=queue_size)
        self.pending: queue.Queue[Pending] = queue.Queue(maxsize=4 * queue_size)
        self._face_thread = threading.Thread(target=self._face_loop, name=f"lane{index}-faces", daemon=True)
        self._decide_thread = threading.Thread(target=self._decide_loop, name=f"lane{index}-decide", daemon=True)
        self._face_thread.start()
        self._decide_thread.start()

    def put(self, item: Intake, timeout: float | None = None) -> None:
        """Queue a frame or control message (blocks while the lane is full: back-pressure; queue.Full on timeout)."""
        self.intake.put(item, timeout=timeout)

    def _face_loop(self) -> None:
        while True:
            try:
                item = self.intake.get(timeout=STALE_CHECK_S)
            except queue.Empty:
                item = False  # idle: only the stale check below
            if item is None:
                for work in self.faces.end_all("shutdown"):
                    self.pending.put(work)
                self.pending.put(None)
                return
            if isinstance(item, ClosePartitions):
                for work in self.faces.close_partitions(item.partitions, item.reason):
                    self.pending.put(work)
                self.pending.put(item)
            elif isinstance(item, WatchlistChanged | CooldownsRead):
                self.pending.put(item)
            elif isinstance(item, EndCamera):
                self.pending.put(self.faces.end_camera(item.camera_id, item.reason))
            elif isinstance(item, Frame):
                self.pending.put(self._process(item))
            for work in self.faces.end_stale(self.stale_after_s):
                self.pending.put(work)

    def _process(self, frame: Frame) -> FaceWork:
        try:
            return self.faces.process(frame)
        except Exception:  # one bad frame must not stop the lane; it still counts as done
            log.exception("lane %d: processing a frame failed", self.index)
            self._metrics.decode_errors.labels("processing").inc()
            return FaceWork(frame.camera_id, frame, checkpoints=self.faces.commits.partition(frame.position))

    def _decide_loop(self) -> None:
        while True:
            work = self.pending.get()
            if work is None:
                return
            if isinstance(work, WatchlistChanged):
                self.decide.watchlist_changed(work.version, work.removed)
                continue
            if isinstance(work, CooldownsRead):
                self.decide.remember(work.announcements)
                continue
            if isinstance(work, ClosePartitions):
                work.closed.set()
                continue
            try:
                self.decide.decide(work)
            except Exception:
                log.exception("lane %d: deciding on a frame failed", self.index)
                self.decide.frame_failed(work)
            finally:
                self._frame_done(work.frame)

    def join(self, timeout: float) -> bool:
        """Wait for both threads to finish; False if they are still running at the deadline."""
        deadline = time.monotonic() + timeout
        self._face_thread.join(max(0.0, deadline - time.monotonic()))
        self._decide_thread.join(max(0.0, deadline - time.monotonic()))
        return not (self._face_thread.is_alive() or self._decide_thread.is_alive())


class Pipeline:
    """Lanes, the shared embedding batcher and the sinks, fed by any number of sources."""

    def __init__(
        self,
        config: PipelineConfig,
        tracking: TrackingConfig,
        rules: DecisionRules,
        detect: Detect,
        align: Align,
        search: Search,
        model_version: str,
        watchlist_version: int,
        sinks: Sequence[EventSink],
        metrics: Metrics,
        commits: Commits | None = None,
        observer: FrameObserver | None = None,
        visitors: SubmitVisitor | None = None,
    ) -> None:
        self.metrics = metrics
        self.commits = commits or Commits()
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        self.search = search  # the batcher's step, run on its thread only
        self.batcher = EmbeddingBatcher(
            search, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, on_batch=self._batch_done
        )
        self.lanes = [
            Lane(
                index,
                FaceStage(
                    detect,
                    align,
                    self.batcher.submit,
                    config,
                    tracking,
                    self.commits,
                    metrics,
                    track_presence=observer is not None,
                    can_vote=rules.can_vote,
                ),
                DecideStage(rules, model_version, watchlist_version, sinks, metrics, observer, visitors),
                config.queue_size,
                tracking.stale_camera_s,
                self._frame_done,
                metrics,
            )
            for index in range(config.lanes)
        ]
        self._lane_of: dict[str, Lane] = {}  # camera id -> its lane, for good once chosen
        self._lane_of_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        recognizer: FaceRecognizer,
        watchlist: Watchlist,
        sinks: Sequence[EventSink],
        metrics: Metrics,
        commits: Commits | None = None,
        observer: FrameObserver | None = None,
        visitors: SubmitVisitor | None = None,
    ) -> Pipeline:
        """The pipeline from its config sections (pipeline, tracking, decisions, events.thumbnails, embedder),
        models and watchlist. Under ``embedder.precision: auto`` on a CPU with bf16 units the search runs bf16
        and checks close decisions in fp32 (``Watchlist.fragile``); with visitors on (their clustering reads
        every descriptor, unchecked) it runs at ``embed``'s precision."""
        rules = DecisionRules.from_config(
            settings.decisions, settings.events.thumbnails, settings.events.track_update_interval_s
        )
        recognizer.load()  # before frames arrive, not on the first one
        if settings.embedder.threads is None:
            # The lanes and the batcher already run in parallel: torch's own threads on top of them
            # fight for the same cores (measured on 2 cores: 1 thread each decided 1.4x the frames/s).
            configure_threads(pipeline_torch_threads(settings.pipeline.lanes))

        def detect(image: np.ndarray) -> list[Box]:
            return recognizer.detect([image])[0]

        def align(image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
            return recognizer.align(image, boxes)

        embedder = recognizer.embedder
        if embedder.checks_search and visitors is None:
            search = CheckedSearch(
                embedder.embed_search,
                watchlist.identify,
                embedder.embed_exact,
                watchlist.fragile,
                settings.embedder.recheck_band,
                on_recheck=metrics.faces_rechecked.inc,
            )
        else:
            search = CheckedSearch(embedder.embed, watchlist.identify)
        return cls(
            settings.pipeline,
            settings.tracking,
            rules,
            detect,
            align,
            search,
            embedder.model_version,
            watchlist.version,
            sinks,
            metrics,
            commits,
            observer,
            visitors,
        )

    def _batch_done(self, size: int, seconds: float) -> None:
        self.metrics.embedding_batch_size.observe(size)
        self.metrics.faces_embedded.inc(size)
        self.metrics.stage_seconds.labels("embed").observe(seconds)

    def lane_of(self, camera_id: str) -> Lane:
        """The lane that serves a camera: always the same one; a new camera gets the lane with the fewest."""
        with self._lane_of_lock:
            lane = self._lane_of.get(camera_id)
            if lane is None:
                served = [0] * len(self.lanes)
                for chosen in self._lane_of.values():
                    served[chosen.index] += 1
                lane = self._lane_of[camera_id] = self.lanes[served.index(min(served))]
            return lane

    def submit(self, frame: Frame) -> None:
        """Queue a frame (blocks while its lane is full: back-pressure on the source)."""
        if self._closed:
            raise RuntimeError("pipeline is closed")
        self.metrics.frames_decoded.labels(self.metrics.camera_label(frame.camera_id)).inc()
        with self._in_flight_lock:
            self._in_flight += 1
        self.lane_of(frame.camera_id).put(frame)

    def end_camera(self, camera_id: str, reason: str) -> None:
        """Close a camera's tracks after its queued frames (end of a file, for example)."""
        self.lane_of(camera_id).put(EndCamera(camera_id, reason))

    def watchlist_changed(self, version: int, removed: Sequence[str] = ()) -> None:
        """Tell every lane the watchlist's new version, and which identities to erase from its decisions."""
        message = WatchlistChanged(version, tuple(removed))
        for lane in self.lanes:
            lane.put(message)

    def remember(self, announcements: Sequence[Announcement]) -> None:
        """Hand announcements read back from the events topic to the lanes of their cameras, before later frames."""
        by_lane: dict[int, list[Announcement]] = {}
        for announcement in announcements:
            by_lane.setdefault(self.lane_of(announcement.camera_id).index, []).append(announcement)
        for index, mine in by_lane.items():
            self.lanes[index].put(CooldownsRead(tuple(mine)))

    def close_partitions(self, partitions: Collection[PartitionKey], reason: str, timeout: float) -> bool:
        """Close the cameras of partitions a rebalance took away, after their queued frames, and wait for it.

        Their open tracks end with ``reason`` and their events are handed to the sinks, then their
        tracking and decision state is forgotten. Returns when every lane has done so: True, or False
        at ``timeout`` (what was decided by then still counts).
        """
        if self._closed:
            return True  # close() ended every track already
        deadline = time.monotonic() + timeout
        messages = []
        try:
            for lane in self.lanes:
                message = ClosePartitions(frozenset(partitions), reason)
                lane.put(message, timeout=max(0.0, deadline - time.monotonic()))
                messages.append(message)
        except queue.Full:
            return False
        return all(message.closed.wait(max(0.0, deadline - time.monotonic())) for message in messages)

    def _frame_done(self, frame: Frame | None) -> None:
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

    def close(self, timeout: float) -> bool:
        """Finish queued frames, end every track (reason shutdown), stop threads. True if all finished in time."""
        deadline = time.monotonic() + timeout
        self._closed = True
        for lane in self.lanes:
            lane.put(None)
        finished = all(lane.join(max(0.0, deadline - time.monotonic())) for lane in self.lanes)
        self.batcher.close()
        return finished
