"""The ingest role: one camera (RTSP URL or video file) onto the Kafka frames topic.

Frames are produced at the source's rate (files are paced by their timestamps; RTSP is live,
and the newest frame wins if the broker is slower than the camera), JPEG-encoded, keyed by
camera id, with the headers described in worker/stream/frames.py.

While the broker is away the producer reconnects by itself (backoff up to
``kafka.retry_backoff_max_s``) and keeps what it was given; at most ``publish.max_pending_frames``
frames wait unacknowledged; from a live camera later ones are dropped and counted (its old frames
are worth little, and memory stays bounded), while a file's reader waits for room instead (up to
``publish.give_up_after_s``), so a broker slower than the file loses nothing. Failures are logged
once, then summed up every ``ERROR_LOG_INTERVAL_S``. A producer that reports a fatal (non-
retriable) error, as kafka-python's idempotent producer does when a broker that came back empty no
longer knows its producer id, is replaced by a new one. When frames have waited
``publish.give_up_after_s`` with none delivered, ``run`` logs one line and returns 2, so a
supervisor restarts the ingest.

With ``http`` it serves /metrics, /healthz and /readyz like the worker (worker/obs/http.py): ready
while the camera is connected and the broker takes frames (none waited ``publish.broker_timeout_s``
unacknowledged), so a camera or broker down behind an ingest shows on a probe and an alert.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

from worker.config import HttpConfig, KafkaConfig, PublishConfig, RtspConfig
from worker.errors import ConfigError
from worker.kafka_clients import connect_with_backoff, producer_failed_for_good, producer_settings
from worker.obs.http import HealthServer
from worker.obs.metrics import Metrics
from worker.stream.frames import Frame, encode_frame_message
from worker.stream.sources.base import FrameSource
from worker.stream.sources.video import FileSource, RtspSource
from worker.stream.urls import redact

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 10.0
SEND_BLOCK_MS = 5000  # longest wait in send() (for the topic's metadata or buffer space) before a frame is dropped
EXIT_LOST, EXIT_GAVE_UP = 1, 2
STALL_S = 60.0  # /healthz fails once the main loop has not turned for this long (while publishing)


class Publisher:
    """Reads one source and produces its frames; ``run`` returns when the source ends or on stop."""

    def __init__(
        self,
        source_url: str,
        camera_id: str,
        topic: str,
        kafka: KafkaConfig,
        rtsp: RtspConfig | None = None,
        loop: bool = False,
        max_fps: float | None = None,
        quality: int = 90,
        realtime: bool = True,
        publish: PublishConfig | None = None,
        http: HttpConfig | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.topic = topic
        self.kafka = kafka
        self.settings = publish or PublishConfig()
        self.quality = quality
        self.min_interval = 1.0 / max_fps if max_fps else 0.0
        self.stop_requested = threading.Event()
        self.metrics = Metrics()
        self.produced = 0
        self.failed = 0  # sent, but the broker never acknowledged them (after the producer's retries)
        self.dropped = 0  # never sent: too many frames waiting, or send() could not take them
        self._last_sent = 0.0
        self._producer: KafkaProducer | None = None
        # Shared by the source thread (sends), Kafka's I/O thread (acks, errors) and run().
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # a pending frame settled
        self._pending = 0  # frames sent by the current producer and not acknowledged yet
        self._generation = 0  # which producer: a replaced one's late callbacks do not touch _pending
        self._waiting_since: float | None = None  # frames wait and none was delivered since
        self._last_error = "no answer"
        self._unreported = 0  # failures and drops not logged yet
        self._next_error_log = 0.0
        self._broken = threading.Event()  # the producer reported a fatal error: run() replaces it
        self._phase = "starting"  # starting, connecting, publishing, stopping: read by the HTTP threads
        self._heartbeat = time.monotonic()
        self._camera_label = self.metrics.camera_label(camera_id)
        if source_url.startswith(("rtsp://", "rtsps://")):
            self.source: FrameSource = RtspSource.from_config(camera_id, source_url, rtsp or RtspConfig(), self.metrics)
        elif Path(source_url).is_file():
            self.source = FileSource(camera_id, source_url, loop=loop, realtime=realtime, metrics=self.metrics)
        else:
            raise ConfigError(f"source {redact(source_url)} is neither an rtsp:// URL nor a video file")
        # Files wait for room among the pending frames; live cameras drop (their old frames are worth little).
        self._backpressure = isinstance(self.source, FileSource)
        self.http: HealthServer | None = None
        if http is not None and http.port:
            self.http = HealthServer(self.metrics.registry, self.alive, self.ready, http.host, http.port)

    # -- health -------------------------------------------------------------------------------

    def alive(self) -> tuple[bool, dict]:
        """Whether a supervisor should leave the process running: the main loop turns (or it is connecting or
        flushing, both bounded by ``publish.give_up_after_s``)."""
        phase = self._phase
        stalled = time.monotonic() - self._heartbeat
        if phase in ("starting", "connecting", "stopping"):
            return True, {"phase": phase}
        return stalled < STALL_S, {"phase": phase, "main_loop_seconds_ago": round(stalled, 1)}

    def ready(self) -> tuple[bool, dict]:
        """Whether frames flow: the camera is connected and the broker acknowledges; the body lists what is not."""
        problems = []
        if not self.source.connected and not self.source.finished.is_set():
            problems.append(f"camera {self.camera_id} not connected")
        kafka_problem = None
        waited = self.waited_s()
        if self._producer is None:
            kafka_problem = f"kafka: connecting to {self.kafka.bootstrap_servers}"
        elif waited > self.settings.broker_timeout_s:
            with self._lock:
                error = self._last_error
            kafka_problem = f"kafka: broker unreachable: no frame acknowledged for {waited:.0f} s ({error})"
        if kafka_problem:
            problems.append(kafka_problem)
        if self.stop_requested.is_set():
            problems.append("shutting down")
        self.metrics.kafka_connected.set(0 if kafka_problem else 1)
        self.metrics.ready.set(0 if problems else 1)
        return not problems, {"problems": problems}

    def _send(self, frame: Frame) -> None:
        if self.min_interval and frame.timestamp - self._last_sent < self.min_interval:
            return
        self._last_sent = frame.timestamp
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            if self._backpressure:
                # A file is not live: wait for the broker rather than drop (bounded by the give-up time).
                while (
                    self._pending >= self.settings.max_pending_frames
                    and not self.stop_requested.is_set()
                    and not self._broken.is_set()
                    and time.monotonic() - self._waiting_since < self.settings.give_up_after_s
                ):
                    self._room.wait(0.1)
            full = self._pending >= self.settings.max_pending_frames
            if not full:
                self._pending += 1
            generation = self._generation
        if full:
            self._lost(dropped=True, error=f"{self.settings.max_pending_frames} frames wait for the broker")
            return
        key, value, headers = encode_frame_message(
            self.camera_id, frame.seq, frame.timestamp, frame.image, self.quality
        )
        producer = self._producer
        assert producer is not None
        try:
            future = producer.send(self.topic, key=key, value=value, headers=headers)
        except KafkaError as exc:  # no metadata or buffer space within SEND_BLOCK_MS; the producer just replaced
            self._settled(generation)
            self._lost(dropped=True, error=f"{type(exc).__name__}: {exc}")
            return
        future.add_callback(lambda _: self._delivered(generation))
        future.add_errback(lambda exc: self._failed(generation, exc))

    def _settled(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._pending -= 1
                self._room.notify_all()

    def _delivered(self, generation: int) -> None:
        self._settled(generation)
        self.metrics.frames_published.labels(self._camera_label).inc()
        with self._lock:
            self.produced += 1
            self._waiting_since = None if self._pending == 0 else time.monotonic()

    def _failed(self, generation: int, error: BaseException) -> None:
        self._settled(generation)
        if producer_failed_for_good(error) and generation == self._generation:
            self._broken.set()
        self._lost(dropped=False, error=f"{type(error).__name__}: {error}")

    def _lost(self, dropped: bool, error: str) -> None:
        """Count a frame that will not arrive; log the first at once, then a summary every ERROR_LOG_INTERVAL_S."""
        reason = "broker_unavailable" if dropped else "not_delivered"
        self.metrics.frames_dropped.labels(self._camera_label, reason).inc()
        now = time.monotonic()
        with self._lock:
            if dropped:
                self.dropped += 1
            else:
                self.failed += 1
            self._last_error = error
            self._unreported += 1
            if now < self._next_error_log:
                return
            count, self._unreported = self._unreported, 0
            self._next_error_log = now + ERROR_LOG_INTERVAL_S
        log.error("camera %s: %d frames not delivered (%s); retrying", self.camera_id, count, error)

    def _pending_frames(self) -> int:
        with self._lock:
            return self._pending

    def waited_s(self) -> float:
        """Seconds that frames have waited with none delivered (0 when nothing waits)."""
        with self._lock:
            since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def _connect(self) -> KafkaProducer | None:
        started = time.monotonic()

        def give_up() -> bool:
            return self.stop_requested.is_set() or time.monotonic() - started > self.settings.give_up_after_s

        return connect_with_backoff(
            lambda: KafkaProducer(**{**producer_settings(self.kafka), "max_block_ms": SEND_BLOCK_MS}),
            f"frames producer ({self.kafka.bootstrap_servers})",
            give_up,
            max_backoff_s=self.kafka.retry_backoff_max_s,
        )

    def _replace_producer(self) -> bool:
        """Swap a producer in a fatal state for a new one (False: no broker answered in time)."""
        log.warning("camera %s: the producer failed (%s); starting a new one", self.camera_id, self._last_error)
        old = self._producer
        self._broken.clear()
        producer = self._connect()
        if producer is None:
            return False
        with self._lock:
            self._generation += 1
            self._pending = 0
        self._producer = producer
        if old is not None:
            with contextlib.suppress(KafkaError):  # what it still holds is lost, and counted by its errbacks
                old.close(timeout=0)
        return True

    def run(self) -> int:
        """Produce until the source ends or stop is requested.

        Returns 0 when every frame was delivered, 1 when some were lost (dropped or failed) but the
        broker came back, 2 when frames waited ``give_up_after_s`` with none delivered.
        """
        if self.http is not None:
            self.http.start()
            log.info("HTTP endpoints on port %d", self.http.port)
        try:
            return self._run()
        finally:
            if self.http is not None:
                self.http.stop()

    def _run(self) -> int:
        self._phase = "connecting"
        self._producer = self._connect()
        if self._producer is None:
            if self.stop_requested.is_set():
                return 0  # stopped before anything was read
            log.error(
                "camera %s: no broker at %s answered for %.0f s; giving up",
                self.camera_id,
                self.kafka.bootstrap_servers,
                self.settings.give_up_after_s,
            )
            return EXIT_GAVE_UP
        self._phase = "publishing"
        self.source.start(self._send)
        gave_up = False
        while not self.stop_requested.is_set() and not self.source.finished.wait(0.2):
            self._heartbeat = time.monotonic()
            gave_up = self.waited_s() > self.settings.give_up_after_s
            if gave_up:
                break
            if self._broken.is_set():
                self._phase = "connecting"
                gave_up = not self._replace_producer()
                self._phase = "publishing"
                if gave_up:
                    break
        self._phase = "stopping"
        self.source.stop()
        if not gave_up:
            # What is still buffered gets the same deadline as any other frame.
            while self._pending_frames() and not self.stop_requested.is_set():
                if self.waited_s() > self.settings.give_up_after_s:
                    gave_up = True
                    break
                with contextlib.suppress(KafkaError):  # not delivered within the second: wait on
                    self._producer.flush(timeout=1.0)
        with contextlib.suppress(KafkaError):  # frames still buffered when giving up are lost, and counted
            self._producer.close(timeout=0 if gave_up else 10)
        summary = (
            f"{self.produced} frames delivered, {self.failed} not delivered, "
            f"{self.dropped} dropped while the broker was away"
        )
        if gave_up:
            log.error(
                "camera %s: no frame delivered to %s for %.0f s (%s); giving up. %s",
                self.camera_id,
                self.kafka.bootstrap_servers,
                self.settings.give_up_after_s,
                self._last_error,
                summary,
            )
            return EXIT_GAVE_UP
        lost = self.failed or self.dropped
        log.log(logging.WARNING if lost else logging.INFO, "camera %s: %s", self.camera_id, summary)
        return EXIT_LOST if lost else 0
