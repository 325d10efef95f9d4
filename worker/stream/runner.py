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
from worker.stream.commits import KafkaCommits
from worker.stream.cooldowns import CooldownRestore
from worker.stream.dead_letters import DeadLetters
from worker.stream.pipeline import Pipeline
from worker.stream.sinks import EventSink, KafkaSink, StdoutSink
from worker.stream.sources.base import FrameSource
from worker.stream.sources.kafka import KafkaFrameSource
from worker.stream.sources.video import FileSource, RtspSource
from worker.stream.urls import expand_env, redact
from worker.stream.visitors import VisitorStage, VisitorThread
from worker.visitors.store import VisitorStore
from worker.watchlist.live import Watchlist
from worker.watchlist.replication import WatchlistFollower
from worker.watchlist.sealing import configured_key

log = logging.getLogger(__name__)

# Without a Kafka frames source (cameras only): how often, and for how long at most, the main loop
# re-sends events that failed.
RESEND_INTERVAL_S = 5.0
RESEND_TIMEOUT_S = 5.0


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
            sources.append(RtspSource.from_config(camera.id, url, settings.rtsp, metrics))
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
        self.commits: KafkaCommits | None = None
        self.sinks: list[EventSink] = []
        self.pipeline: Pipeline | None = None
        self.cooldowns: CooldownRestore | None = None
        self.visitors: VisitorThread | None = None
        self._heartbeat = time.monotonic()
        self.http: HealthServer | None = None
        if settings.http.port:
            self.http = HealthServer(
                self.metrics.registry, self.alive, self.ready, settings.http.host, settings.http.port
            )

    # -- health -------------------------------------------------------------------------------

    def alive(self) -> tuple[bool, dict]:
        """Whether Kubernetes should leave the worker running: the main loop runs and commits can advance."""
        if self.pipeline is None and not self.stop_requested.is_set():
            # Loading models and the watchlist can outlast the stall limit; readiness covers it.
            return True, {"phase": "loading"}
        stalled = time.monotonic() - self._heartbeat
        detail: dict = {"main_loop_seconds_ago": round(stalled, 1)}
        if self.commits is not None and self.commits.stalled:
            # Re-sending and retrying did not help: only a restart (and the replay from the last commit) delivers.
            detail["commits"] = (
                f"stalled: flushing failed {self.commits.failed_flushes} rounds in a row, "
                f"commits failing for {self.commits.behind_s:.0f} s"
            )
            return False, detail
        return stalled < 60.0, detail

    def ready(self) -> tuple[bool, dict]:
        """Whether the worker does its job now; the body lists what is missing."""
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
        if self.kafka_source is not None:
            kafka_problem = self.kafka_source.problem()
            if kafka_problem is not None:
                problems.append(f"kafka: {kafka_problem}")
            self.metrics.kafka_connected.set(0 if kafka_problem else 1)
        if self.commits is not None and self.commits.failed_flushes:
            problems.append(f"kafka: events not delivered ({self.commits.failed_flushes} commit rounds)")
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
        self.metrics.build.info({"version": __version__, "torch": torch.__version__, "model": embedder.model_version})
        self.models_loaded = True
        if s.watchlist.replication_topic:
            self.follower = WatchlistFollower(
                s.kafka,
                s.watchlist.replication_topic,
                s.watchlist.store,
                erasure_wait_s=s.watchlist.erasure_wait_s,
                on_rejected=self.metrics.watchlist_records_rejected.inc,
                key=configured_key(s.watchlist),
            ).start()
        self.watchlist = Watchlist(s, embedder.model_version, self.metrics)
        if s.events.stdout:
            self.sinks.append(StdoutSink(self.metrics))
        if s.events.kafka_topic:
            self.sinks.append(KafkaSink.from_config(self.metrics, s.kafka, s.events, self.stop_requested))
        dead_letters = None
        if s.frames.enabled:
            dead_letters = DeadLetters.from_config(s.kafka, s.frames, self.metrics, self.stop_requested)
            self.commits = KafkaCommits(
                s.frames.checkpoint_interval, [*self.sinks, dead_letters], stall_after_s=s.frames.commit_stall_s
            )
        if s.visitors.enabled:
            stage = VisitorStage(s.visitors, VisitorStore(s.visitors.store), self.metrics)
            self.visitors = VisitorThread(stage, self.sinks, self.metrics)
        self.pipeline = Pipeline.from_settings(
            s,
            recognizer,
            self.watchlist,
            self.sinks,
            self.metrics,
            commits=self.commits,
            visitors=self.visitors.submit if self.visitors else None,
        )
        # The precision the watchlist search runs at: auto's bf16 says that close calls are checked in fp32.
        checked = self.pipeline.search.checks
        precision = f"{embedder.search_precision}+fp32-check" if checked else embedder.precision
        self.metrics.device.labels(embedder.device_name, precision).set(1)
        self.cooldowns = self._cooldown_restore(self.pipeline)
        if dead_letters is not None and self.commits is not None:
            pipeline = self.pipeline

            def close_partitions(partitions: list[tuple[str, int]], reason: str) -> bool:
                # Frames queued before a revocation are finished as at shutdown, within the same bound.
                return pipeline.close_partitions(partitions, reason, s.shutdown.drain_timeout_s)

            self.kafka_source = KafkaFrameSource(
                s.kafka, s.frames, s.images.max_pixels, self.metrics, self.commits, dead_letters, self.cooldowns,
                close_partitions,
            )  # fmt: skip
        self._heartbeat = time.monotonic()

    def _cooldown_restore(self, pipeline: Pipeline) -> CooldownRestore | None:
        """What seeds the cooldowns from the events topic: for newly assigned partitions, and for the cameras read
        directly, at start (None: nothing to read back)."""
        s = self.settings
        if s.decisions.cooldown_s <= 0:
            return None
        if not s.events.kafka_topic:
            if s.frames.enabled:  # a replay is coming: say what it will not know
                log.warning(
                    "events.kafka_topic is not set: after a restart or rebalance, the re-alert cooldown starts "
                    "empty and an identity announced shortly before may be announced again"
                )
            return None
        return CooldownRestore(
            s.kafka,
            s.events.kafka_topic,
            s.decisions.cooldown_s,
            s.decisions.restore_margin_s,
            pipeline.remember,
            self.metrics,
        )

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
            if self.sources and self.cooldowns is not None:
                # Cameras read directly have no replay, but a restart must not forget who was just announced
                # on them either: their frames are stamped from now on.
                self.cooldowns(time.time())
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
        next_reload = next_resend = 0.0
        while not self.stop_requested.wait(0.2):
            self._heartbeat = time.monotonic()
            for source in self.sources:
                if source.finished.is_set() and source.name not in ended:
                    ended.add(source.name)
                    self.pipeline.end_camera(source.name, "end_of_stream")
            now = time.monotonic()
            if now >= next_reload:
                self.reload_watchlist()
                next_reload = now + self.settings.watchlist.reload_interval_s
            if self.commits is None and now >= next_resend:
                self._resend_failed_events()
                next_resend = now + RESEND_INTERVAL_S
            self.ready()
            all_ended = self.sources and self.kafka_source is None and len(ended) == len(self.sources)
            if all_ended and self.pipeline.wait_idle(0.0):
                log.info("every source has ended")
                return

    def _resend_failed_events(self) -> None:
        """Re-send events a sink failed to deliver (a broker that was down, or came back empty).

        With a Kafka frames source every commit round flushes the sinks first; cameras read directly
        have no commit round, so the main loop flushes in its place, only sinks holding failures, each
        for at most RESEND_TIMEOUT_S (the loop is the liveness heartbeat).
        """
        for sink in self.sinks:
            if not sink.healthy and sink.flush(RESEND_TIMEOUT_S):
                log.info("sink %s: the events that failed are delivered", sink.name)

    def reload_watchlist(self) -> None:
        """Apply watchlist changes; the lanes learn the new version and erase removed identities, in frame order."""
        assert self.pipeline is not None and self.watchlist is not None
        removed: list[str] = []
        if self.watchlist.follow(removed.append):
            self.pipeline.watchlist_changed(self.watchlist.version, removed)

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
        if self.visitors is not None:
            # After the lanes: tracks closed at shutdown are counted, then open visits end (reason shutdown).
            drained = self.visitors.close(max(0.1, deadline - time.monotonic())) and drained
            self.visitors.stage.store.close()
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
