"""`facewatch run`: wire sources, the pipeline, the watchlist, sinks and the HTTP endpoints.

Lifecycle: the HTTP server starts first (alive, not ready), then models and the watchlist load,
then sources start. SIGTERM or SIGINT stops intake; frames in flight are finished, every open
track is closed (TrackEnded reason ``shutdown``), events are flushed, Kafka offsets committed,
and the process exits 0, all within ``shutdown.drain_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import torch

from worker import __version__
from worker.config import Settings
from worker.errors import ConfigError
from worker.obs.http import HealthServer
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.stream.pipeline import Pipeline
from worker.stream.sinks import EventSink, KafkaSink, StdoutSink
from worker.stream.sources.base import FrameSource
from worker.stream.sources.kafka import KafkaFrameSource
from worker.stream.sources.video import FileSource, RtspSource
from worker.stream.urls import expand_env, redact
from worker.watchlist.live import Watchlist
from worker.watchlist.replication import WatchlistFollower

log = logging.getLogger(__name__)


def build_sources(settings: Settings, metrics: Metrics) -> list[FrameSource]:
    """A source per configured camera (RTSP URL or video file)."""
    sources: list[FrameSource] = []
    seen: set[str] = set()
    for index, camera in enumerate(settings.cameras):
        if camera.id in seen:
            raise ConfigError(f"cameras.{index}.id: camera id {camera.id!r} is used twice")
        seen.add(camera.id)
        url = expand_env(camera.url, f"cameras.{index}.url")
        if url.startswith(("rtsp://", "rtsps://")):
            sources.append(RtspSource(camera.id, url, metrics))
        else:
            path = Path(url)
            if not path.is_file():
                raise ConfigError(f"cameras.{index}.url: {redact(url)} is neither an rtsp:// URL nor a video file")
            sources.append(FileSource(camera.id, path, loop=camera.loop, realtime=camera.realtime, metrics=metrics))
    return sources


class Worker:
    """One worker process: everything `facewatch run` starts."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        if not settings.cameras and not settings.frames.enabled:
            raise ConfigError("nothing to watch: configure cameras (cameras: [...]) or frames.enabled: true")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.stop_requested = threading.Event()
        self.models_loaded = False
        self.watchlist: Watchlist | None = None
        self.follower: WatchlistFollower | None = None
        self.sources = build_sources(settings, self.metrics)
        self.kafka_source: KafkaFrameSource | None = None
        self.sinks: list[EventSink] = []
        self.pipeline: Pipeline | None = None
        self._heartbeat = time.monotonic()
        self.http: HealthServer | None = None
        if settings.http.port:
            self.http = HealthServer(
                self.metrics.registry, self.alive, self.ready, settings.http.host, settings.http.port
            )

    # -- health -------------------------------------------------------------------------------

    def alive(self) -> tuple[bool, dict]:
        if self.pipeline is None and not self.stop_requested.is_set():
            # Loading models and the watchlist can outlast the stall limit; readiness covers it.
            return True, {"phase": "loading"}
        stalled = time.monotonic() - self._heartbeat
        return stalled < 60.0, {"main_loop_seconds_ago": round(stalled, 1)}

    def ready(self) -> tuple[bool, dict]:
        problems = []
        if not self.models_loaded:
            problems.append("models loading")
        if self.watchlist is None:
            problems.append("watchlist loading")
        if self.follower is not None and not self.follower.caught_up.is_set():
            problems.append(f"watchlist replica catching up ({self.follower.last_error or 'reading'})")
        problems += [
            f"camera {s.name} not connected" for s in self.sources if not s.connected and not s.finished.is_set()
        ]
        if self.kafka_source is not None and not self.kafka_source.connected:
            problems.append(f"kafka: {self.kafka_source.last_error or 'no partitions assigned'}")
        if self.kafka_source is not None and self.kafka_source.commits_frozen:
            problems.append("kafka: events not delivered, commits frozen")
        problems += [f"sink {sink.name} failing" for sink in self.sinks if not sink.healthy]
        if self.stop_requested.is_set():
            problems.append("shutting down")
        self.metrics.ready.set(0 if problems else 1)
        return not problems, {"problems": problems}

    # -- lifecycle ----------------------------------------------------------------------------

    def _load(self) -> None:
        s = self.settings
        recognizer = FaceRecognizer(s)
        embedder = recognizer.embedder
        recognizer.load()
        self.metrics.device.labels(embedder.device_name, s.embedder.precision).set(1)
        self.metrics.build.info({"version": __version__, "torch": torch.__version__, "model": embedder.model_version})
        self.models_loaded = True
        if s.watchlist.replication_topic:
            self.follower = WatchlistFollower(s.kafka, s.watchlist.replication_topic, s.watchlist.store).start()
        self.watchlist = Watchlist(s, embedder.model_version, self.metrics)
        if s.events.stdout:
            self.sinks.append(StdoutSink(self.metrics))
        if s.events.kafka_topic:
            self.sinks.append(KafkaSink(self.metrics, s.kafka, s.events.kafka_topic, self.stop_requested))
        if s.frames.enabled:
            self.kafka_source = KafkaFrameSource(s.kafka, s.frames, s.images.max_pixels, self.metrics, self.sinks)
        watchlist = self.watchlist
        self.pipeline = Pipeline(
            s,
            recognizer,
            watchlist.identify,
            lambda: watchlist.version,
            self.sinks,
            self.metrics,
            checkpoints_for=self.kafka_source.checkpoints_for if self.kafka_source else None,
        )
        self._heartbeat = time.monotonic()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_requested.set())

    def run(self) -> int:
        """Run until stopped (or until every file source has ended); returns the exit status."""
        if self.http:
            self.http.start()
            log.info("HTTP endpoints on port %d", self.http.port)
        try:
            self._load()
            assert self.pipeline is not None and self.watchlist is not None
            for source in self.sources:
                source.start(self.pipeline.submit)
            if self.kafka_source is not None:
                self.kafka_source.start(self.pipeline.submit)
            self._loop()
        finally:
            status = self._shutdown()
        return status

    def _loop(self) -> None:
        assert self.pipeline is not None and self.watchlist is not None
        ended: set[str] = set()
        stale_after = self.settings.tracking.stale_camera_s
        next_reload = 0.0
        while not self.stop_requested.wait(0.2):
            self._heartbeat = time.monotonic()
            for source in self.sources:
                if source.finished.is_set() and source.name not in ended:
                    ended.add(source.name)
                    self.pipeline.end_camera(source.name, "end_of_stream")
            now = time.monotonic()
            for camera_id, last_frame, open_tracks in self.pipeline.cameras():
                if open_tracks and camera_id not in ended and now - last_frame > stale_after:
                    self.pipeline.end_camera(camera_id, "lost")
            if now >= next_reload:
                self.watchlist.follow(self.forget_identity)
                next_reload = now + self.settings.watchlist.reload_interval_s
            self.ready()
            all_ended = self.sources and self.kafka_source is None and len(ended) == len(self.sources)
            if all_ended and self.pipeline.wait_idle(0.0):
                log.info("every source has ended")
                return

    def forget_identity(self, identity_id: str) -> None:
        """Erasure reaches the decision state of every camera too."""
        if self.pipeline is not None:
            for lane in self.pipeline.lanes:
                for camera in list(lane.cameras.values()):
                    camera.decisions.forget_identity(identity_id)

    def _shutdown(self) -> int:
        self.stop_requested.set()
        deadline = time.monotonic() + self.settings.shutdown.drain_timeout_s
        for source in self.sources:
            source.stop(timeout=max(0.1, deadline - time.monotonic()))
        if self.kafka_source is not None:
            self.kafka_source.stop(timeout=max(0.1, deadline - time.monotonic()))
        drained = True
        if self.pipeline is not None:
            pipeline = self.pipeline

            def drain() -> None:
                nonlocal drained
                drained = pipeline.close(max(0.1, deadline - time.monotonic()))

            if self.kafka_source is not None:
                self.kafka_source.close(drain)
            else:
                drain()
        for sink in self.sinks:
            sink.close()
        if self.follower is not None:
            self.follower.stop()
        if self.watchlist is not None:
            self.watchlist.close()
        if self.http:
            self.http.stop()
        if not drained:
            log.error("shutdown: frames were still in flight after %.0f s", self.settings.shutdown.drain_timeout_s)
            return 1
        return 0
