"""The ingest role: one camera (RTSP URL or video file) onto the Kafka frames topic.

Frames are produced at the source's rate (files are paced by their timestamps; RTSP is live,
and the newest frame wins if the broker is slower than the camera), JPEG-encoded, keyed by
camera id, with the headers described in worker/stream/frames.py.

While the broker is away the producer reconnects by itself (backoff up to
``kafka.retry_backoff_max_s``) and keeps what it was given; at most ``publish.max_pending_frames``
frames wait unacknowledged, later ones are dropped and counted (a live camera's old frames are
worth little, and memory stays bounded). Failures are logged once, then summed up every
``ERROR_LOG_INTERVAL_S``. A producer that reports a fatal (non-retriable) error, as kafka-python's
idempotent producer does when a broker that came back empty no longer knows its producer id, is
replaced by a new one. When frames have waited ``publish.give_up_after_s`` with none delivered,
``run`` logs one line and returns 2, so a supervisor restarts the ingest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

from worker.config import KafkaConfig, PublishConfig, RtspConfig
from worker.errors import ConfigError
from worker.kafka_clients import connect_with_backoff, producer_failed_for_good, producer_settings
from worker.obs.metrics import Metrics
from worker.stream.frames import Frame, encode_frame_message
from worker.stream.sources.base import FrameSource
from worker.stream.sources.video import FileSource, RtspSource
from worker.stream.urls import redact

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL_S = 10.0
SEND_BLOCK_MS = 5000  # longest wait in send() (for the topic's metadata or buffer space) before a frame is dropped
EXIT_LOST, EXIT_GAVE_UP = 1, 2


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
        self._pending = 0  # frames sent by the current producer and not acknowledged yet
        self._generation = 0  # which producer: a replaced one's late callbacks do not touch _pending
        self._waiting_since: float | None = None  # frames wait and none was delivered since
        self._last_error = "no answer"
        self._unreported = 0  # failures and drops not logged yet
        self._next_error_log = 0.0
        self._broken = threading.Event()  # the producer reported a fatal error: run() replaces it
        if source_url.startswith(("rtsp://", "rtsps://")):
            self.source: FrameSource = RtspSource.from_config(camera_id, source_url, rtsp or RtspConfig(), self.metrics)
        elif Path(source_url).is_file():
            self.source = FileSource(camera_id, source_url, loop=loop, realtime=realtime)
        else:
            raise ConfigError(f"source {redact(source_url)} is neither an rtsp:// URL nor a video file")

    def _send(self, frame: Frame) -> None:
        if self.min_interval and frame.timestamp - self._last_sent < self.min_interval:
            return
        self._last_sent = frame.timestamp
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
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

    def _delivered(self, generation: int) -> None:
        self._settled(generation)
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
        self.metrics.frames_dropped.labels(self.metrics.camera_label(self.camera_id), reason).inc()
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
        self.source.start(self._send)
        gave_up = False
        while not self.stop_requested.is_set() and not self.source.finished.wait(0.2):
            gave_up = self.waited_s() > self.settings.give_up_after_s
            if gave_up:
                break
            if self._broken.is_set():
                gave_up = not self._replace_producer()
                if gave_up:
                    break
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
