"""The visitor stage: tracks that end unknown become anonymous visitors and visits (docs/visitors.md).

    decide thread (any lane): a track ends unknown -> VisitorTrack (mean embedding of its voting faces)
        -> VisitorThread.submit() -> Future
    visitor thread (one per worker): VisitorStage.track_ended -> opt-out check -> online clustering
        -> store (one transaction) -> visits -> visit_started / visit_ended events
        -> the decide thread publishes them with the frame's other events, before its commit steps

The visitor stage owns the visitor state: the FAISS index of centroids, the open visits and the
store's writes. It runs on its own thread because visitors span every camera, and lanes are per
camera; others reach it only through its queue. Between tracks the thread expires visits past
``visitors.visit_gap_s``, purges what is past retention, and applies changes other processes made
to the store (``facewatch visitors forget``, opt-out, recluster) before its next write, so a
forgotten visitor never comes back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from worker.config import VisitorsConfig
from worker.obs.metrics import Metrics
from worker.stream.events import VisitEnded, VisitStarted, event_id, parse_event, timestamp
from worker.stream.sinks import EventSink
from worker.visitors.cluster import Centroid, OnlineClusters
from worker.visitors.store import OutboxEvent, TrackRow, VisitorRow, VisitorStore, VisitRow
from worker.visitors.visits import Visits

log = logging.getLogger(__name__)

VisitEvent = VisitStarted | VisitEnded
Clock = Callable[[], float]  # Unix seconds
TICK_S = 1.0


@dataclass(frozen=True)
class VisitorTrack:
    """A track that ended unknown, as the visitor stage needs it (no pixels)."""

    camera_id: str
    track_id: str
    started: float
    ended: float
    embedding: np.ndarray  # mean of its voting faces' embeddings
    faces: int
    matched_watchlist: bool = False  # some face matched a watchlist identity: never a visitor


@dataclass
class TrackFaces:
    """The embeddings of one open track's voting faces, summed (the decide stage keeps one per open track)."""

    total: np.ndarray | None = None
    faces: int = 0
    matched_watchlist: bool = False

    def add(self, embedding: np.ndarray, matched: bool) -> None:
        vector = np.asarray(embedding, dtype=np.float64)
        self.total = vector.copy() if self.total is None else self.total + vector
        self.faces += 1
        self.matched_watchlist = self.matched_watchlist or matched


@dataclass
class TrackEmbeddings:
    """Per camera and track, the faces' embeddings so far; owned by one decide stage."""

    tracks: dict[tuple[str, str], TrackFaces] = field(default_factory=dict)

    def add(self, camera_id: str, track_id: str, embedding: np.ndarray, matched: bool) -> None:
        self.tracks.setdefault((camera_id, track_id), TrackFaces()).add(embedding, matched)

    def pop(self, camera_id: str, track_id: str, started: float, ended: float) -> VisitorTrack | None:
        """The track's summary, and forget it; None when no face of it was embedded."""
        faces = self.tracks.pop((camera_id, track_id), None)
        if faces is None or faces.total is None:
            return None
        mean = (faces.total / faces.faces).astype(np.float32)
        return VisitorTrack(camera_id, track_id, started, ended, mean, faces.faces, faces.matched_watchlist)


class VisitorStage:
    """Online clustering, visits, the store and the opt-out list. One thread calls it (``VisitorThread``)."""

    def __init__(
        self,
        config: VisitorsConfig,
        store: VisitorStore,
        metrics: Metrics,
        clock: Clock = time.time,
        idle: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._idle = idle
        self.clusters = OnlineClusters(config.threshold, config.merge_threshold)
        self.visits = Visits(config.visit_gap_s)
        self._event_time: float | None = None  # latest track end seen (frame time)
        self._event_wall = idle()
        self._next_purge = 0.0
        self._gauge_zones: set[str] = set()
        self._load()

    def _load(self) -> None:
        """(Re)build the index, open visits and opt-out list from the store."""
        self.seen_version = self.store.version
        self.clusters = OnlineClusters(self.config.threshold, self.config.merge_threshold)
        tracks: dict[str, list[tuple[str, float, float]]] = {}
        horizon = self.clock() - 3600.0
        for track in self.store.tracks(since=horizon):
            tracks.setdefault(track.visitor_id, []).append((track.camera, track.started, track.ended))
        for row in self.store.visitors():
            self.clusters.load(
                Centroid(
                    row.id, row.centroid_sum.copy(), row.weight, row.first_seen, row.last_seen, tracks.get(row.id, [])
                )
            )
        self._tracks = {row.id: row.tracks for row in self.store.visitors()}
        self.visits = Visits(self.config.visit_gap_s)
        for visit in self.store.visits(open_only=True):
            self.visits.load(visit)
        _, self._opt_out = self.store.opt_out_embeddings()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.visitors_retained.set(len(self.clusters))
        open_per_zone: dict[str, int] = {}
        for visit in self.visits.open_visits():
            open_per_zone[visit.zone] = open_per_zone.get(visit.zone, 0) + 1
        for zone, count in open_per_zone.items():
            self.metrics.visits_open.labels(self.metrics.camera_label(zone)).set(count)
        for zone in self._gauge_zones - open_per_zone.keys():
            self.metrics.visits_open.labels(self.metrics.camera_label(zone)).set(0)
        self._gauge_zones = set(open_per_zone)

    # -- messages ------------------------------------------------------------------------------

    def follow(self) -> bool:
        """Apply changes other processes made to the store; returns whether there were any."""
        version = self.store.version
        if version == self.seen_version:
            return False
        changes = self.store.changes_since(self.seen_version)
        forgotten = [c.visitor_id for c in changes if c.op == "forget" and c.visitor_id]
        if any(c.op != "forget" for c in changes):
            self._load()  # opt-out list or an offline relabel: rebuild from the store
        else:
            for visitor_id in forgotten:
                self.forget(visitor_id)
            self.seen_version = version
        self.metrics.visitors_deleted.labels("forget").inc(len(forgotten))
        log.info("visitor store now at version %d (%d forgotten)", version, len(forgotten))
        return True

    def forget(self, visitor_id: str) -> None:
        """Erase a visitor from the index and the open visits (the store already deleted it)."""
        self.clusters.remove(visitor_id)
        self.visits.forget(visitor_id)
        self._tracks.pop(visitor_id, None)
        self._update_gauges()

    def now(self) -> float:
        """Event time: the latest track end seen, advanced by the (monotonic) time since, when idle."""
        if self._event_time is None:
            return self.clock()
        return self._event_time + (self._idle() - self._event_wall)

    def tick(self) -> list[VisitEvent]:
        """Between tracks: store changes, visits past the gap, retention."""
        self.follow()
        events = self._ended(self.visits.expire(self.now()))
        if self.clock() >= self._next_purge:
            self.purge()
            self._next_purge = self.clock() + self.config.purge_interval_s
        return events

    def purge(self) -> dict:
        """Delete what is past retention from the store, then rebuild the index from it."""
        retention_s = self.config.retention_hours * 3600.0
        result = self.store.purge(self.clock(), retention_s, self.config.aggregate_retention_days * 86400.0)
        if result["visitors"] or result["changed"]:
            self._load()  # centroids lost visitors or expired tracks: the index follows the store
        self.metrics.visitors_deleted.labels("retention").inc(len(result["visitors"]))
        self._update_gauges()
        return result

    def track_ended(self, track: VisitorTrack) -> list[VisitEvent]:
        """Cluster one unknown track into a visitor and count its visit; the events it causes."""
        if track.matched_watchlist:
            self.metrics.visitor_tracks.labels("watchlist").inc()
            return []
        if track.faces < self.config.min_faces:
            self.metrics.visitor_tracks.labels("few_faces").inc()
            return []
        self.follow()
        if len(self._opt_out):
            distances = np.linalg.norm(self._opt_out - track.embedding.reshape(1, -1), axis=1)
            if float(distances.min()) <= self.config.opt_out_threshold:
                self.metrics.visitor_tracks.labels("opted_out").inc()
                return []
        if self.store.track_visitor(track.camera_id, track.track_id) is not None:
            # Recorded before a crash: counted once, but its events again (the same ids), since they
            # may never have left the worker (at least once, like face_match).
            self.metrics.visitor_tracks.labels("replayed").inc()
            return [_visit_event(e) for e in self.store.track_events(track.camera_id, track.track_id)]
        events: list[VisitEvent] = []
        for _ in range(3):
            written = self._record(track)
            if written is not None:
                events = written
                break
        self._event_time = max(self._event_time or track.ended, track.ended)
        self._event_wall = self._idle()
        self._update_gauges()
        return events

    def _record(self, track: VisitorTrack) -> list[VisitEvent] | None:
        zone = self.config.zone_of(track.camera_id)
        ended: list[tuple[VisitRow, str]] = self.visits.expire(track.started)  # visits past the gap end first
        assignment = self.clusters.assign(track.embedding, track.camera_id, track.started, track.ended)
        visitor = self.clusters.get(assignment.visitor_id)
        assert visitor is not None
        tracks = self._tracks.get(assignment.visitor_id, 0) + 1 + sum(self._tracks.get(m, 0) for m in assignment.merged)
        # Returning: an earlier trip. The visitor had visits, and none is still open in another zone
        # (walking on from the entrance to the floor is the same trip).
        ids = {assignment.visitor_id, *assignment.merged}
        open_elsewhere = any(v.visitor_id in ids and v.zone != zone for v in self.visits.open_visits())
        returning = (
            not assignment.new and not open_elsewhere and any(self.store.visits(visitor_id=i) for i in sorted(ids))
        )
        touched: list[VisitRow] = []
        for absorbed in assignment.merged:
            updated, closed = self.visits.merge(assignment.visitor_id, absorbed)
            touched += updated
            ended += closed
        change = self.visits.track(
            assignment.visitor_id, zone, track.camera_id, track.track_id, track.started, track.ended, returning
        )
        ended += list(change.ended)
        touched += [v for v in (change.started, change.updated) if v is not None]
        row = VisitorRow(
            visitor.visitor_id, visitor.first_seen, visitor.last_seen, visitor.total, visitor.weight, tracks
        )
        track_row = TrackRow(
            track.camera_id,
            track.track_id,
            visitor.visitor_id,
            zone,
            track.started,
            track.ended,
            track.faces,
            track.embedding,
        )
        visit_rows = [v for v, _ in ended] + touched
        events: list[VisitEvent] = [_ended_event(visit, reason) for visit, reason in ended]
        if change.started is not None:
            events.append(_started_event(change.started))
        outbox = [_outbox(e) for e in events]
        if not self.store.record_track(track_row, row, assignment.merged, visit_rows, self.seen_version, outbox):
            # Another process changed the store since we looked: the store holds everything we wrote
            # before, so rebuild from it (this undoes the assignment above) and try again.
            self._load()
            return None
        self._tracks[visitor.visitor_id] = tracks
        for absorbed in assignment.merged:
            self._tracks.pop(absorbed, None)
        self.metrics.visitor_tracks.labels("assigned").inc()
        if assignment.new:
            self.metrics.visitors_new.labels(self.metrics.camera_label(zone)).inc()
        self._observe_ended(ended)
        if change.started is not None:
            self.metrics.visits.labels(
                self.metrics.camera_label(zone), "true" if change.started.returning else "false"
            ).inc()
        return events

    def _observe_ended(self, ended: Sequence[tuple[VisitRow, str]]) -> None:
        for visit, _ in ended:
            self.metrics.visit_dwell.labels(self.metrics.camera_label(visit.zone)).observe(visit.dwell_s)
        if ended:
            self._update_gauges()

    def _ended(self, ended: Sequence[tuple[VisitRow, str]]) -> list[VisitEvent]:
        """Visits ended by the clock or at shutdown: saved with their events, which are owed until delivered."""
        events: list[VisitEvent] = [_ended_event(visit, reason) for visit, reason in ended]
        if ended:
            self.store.save_visits([visit for visit, _ in ended], [_outbox(e) for e in events], self.now())
        self._observe_ended(ended)
        return events

    def owed(self) -> list[VisitEvent]:
        """Events of visits ended by the clock or at shutdown that no sink confirmed yet (after a crash: send again)."""
        return [_visit_event(e) for e in self.store.owed_events()]

    def delivered(self, event_ids: Sequence[str]) -> None:
        """Every sink confirmed these owed events: they are no longer owed."""
        self.store.delivered(event_ids)

    def close(self) -> list[VisitEvent]:
        """Shutdown: end every open visit (reason shutdown)."""
        return self._ended(self.visits.close_all("shutdown"))


def _visit_fields(visit: VisitRow, kind: str) -> dict[str, object]:
    """The fields every event of ``visit`` carries; ``kind`` (visit_started, visit_ended) keys its event id."""
    return {
        "event_id": event_id(visit.camera, visit.id, kind),
        "camera_id": visit.camera,
        "zone": visit.zone,
        "visitor_id": visit.visitor_id,
        "visit_id": visit.id,
        "returning": visit.returning,
        "started_at": timestamp(visit.started),
    }


def _started_event(visit: VisitRow) -> VisitStarted:
    return VisitStarted(**_visit_fields(visit, "visit_started"))  # type: ignore[arg-type]


def _ended_event(visit: VisitRow, reason: str) -> VisitEnded:
    return VisitEnded(
        **_visit_fields(visit, "visit_ended"),  # type: ignore[arg-type]
        ended_at=timestamp(visit.ended),
        dwell_s=visit.dwell_s,
        tracks=visit.tracks,
        reason=reason,  # type: ignore[arg-type]
    )


def _outbox(event: VisitEvent) -> OutboxEvent:
    return OutboxEvent(event.event_id, event.visitor_id, event.model_dump_json())


def _visit_event(data: str) -> VisitEvent:
    event = parse_event(data)
    assert isinstance(event, VisitStarted | VisitEnded)
    return event


@dataclass(frozen=True)
class _Delivered:
    """Every sink confirmed the delivery of these owed events (sent from the sinks' callbacks)."""

    event_ids: tuple[str, ...]


@dataclass(frozen=True)
class _Stop:
    """Shut down: end the open visits, publish and flush their events within ``timeout`` seconds."""

    timeout: float


_Message = tuple[VisitorTrack, Future] | _Delivered | _Stop


class VisitorThread:
    """The visitor stage's thread: tracks arrive by ``submit``; events of its own (gap, shutdown) go to the sinks.

    Those events are owed, in the store, from the moment their visits end until every sink confirmed
    their delivery (a message back through this thread's queue); a worker that crashed before sends
    them again when it starts (the same event ids).
    """

    def __init__(self, stage: VisitorStage, sinks: Sequence[EventSink], metrics: Metrics) -> None:
        self.stage = stage
        self.sinks = list(sinks)
        self.metrics = metrics
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="visitors", daemon=True)
        self._thread.start()

    def submit(self, track: VisitorTrack) -> Future:
        """Queue an unknown track; the Future gives the visit events it caused (the caller publishes them)."""
        future: Future = Future()
        self._queue.put((track, future))
        return future

    def _publish_owed(self, events: Sequence[VisitEvent]) -> None:
        """Publish owed events; each, once every sink confirmed it, is reported back as delivered."""
        if not self.sinks:  # events go nowhere: nothing is owed to anyone
            self.stage.delivered([event.event_id for event in events])
            return
        for event in events:
            waiting = [len(self.sinks)]
            lock = threading.Lock()

            def confirmed(event_id: str = event.event_id, waiting: list[int] = waiting, lock=lock) -> None:
                with lock:  # sinks confirm from their own threads
                    waiting[0] -= 1
                    done = waiting[0] == 0
                if done:
                    self._queue.put(_Delivered((event_id,)))

            for sink in self.sinks:
                sink.publish_confirmed(event, time.monotonic(), confirmed)

    def _loop(self) -> None:
        try:
            self._publish_owed(self.stage.owed())  # what a crash left undelivered
        except Exception:
            log.exception("visitors: the events owed from before could not be sent")
        next_tick = time.monotonic() + TICK_S
        while True:
            try:
                message: _Message | None = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                message = None
            try:
                if isinstance(message, _Stop):
                    self._stop(message.timeout)
                    return
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    self._publish_owed(self.stage.tick())
                if isinstance(message, _Delivered):
                    self.stage.delivered(message.event_ids)
                elif message is not None:
                    track, future = message
                    try:
                        future.set_result(self.stage.track_ended(track))
                    except Exception as exc:  # one bad track must not stop visitor counting
                        log.exception("visitors: a track could not be counted")
                        self.metrics.visitor_tracks.labels("failed").inc()
                        future.set_exception(exc)
            except Exception:
                log.exception("visitors: housekeeping failed")

    def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._publish_owed(self.stage.close())
        # The commit protocol's last flush is over (the lanes were drained first), so this thread may flush:
        # what it confirms is not sent again at the next start.
        for sink in self.sinks:
            sink.flush(max(0.1, deadline - time.monotonic()))
        delivered: list[str] = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, _Delivered):
                delivered += message.event_ids
        self.stage.delivered(delivered)

    def close(self, timeout: float) -> bool:
        """End open visits (their events go out), stop the thread; True if it finished in time."""
        self._queue.put(_Stop(timeout * 0.8))
        self._thread.join(timeout)
        return not self._thread.is_alive()
