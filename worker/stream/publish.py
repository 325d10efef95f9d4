"""The ingest role: one camera (RTSP URL or video file) onto the Kafka frames topic.

Frames are produced at the source's rate (files are paced by their timestamps; RTSP is live,
and the newest frame wins if the broker is slower than the camera), JPEG-encoded, keyed by
camera id, with the headers described in worker/stream/frames.py.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kafka import KafkaProducer

from worker.config import KafkaConfig, RtspConfig
from worker.errors import ConfigError
from worker.kafka_clients import connect_with_backoff, producer_settings
from worker.obs.metrics import Metrics
from worker.stream.frames import Frame, encode_frame_message
from worker.stream.sources.base import FrameSource
from worker.stream.sources.video import FileSource, RtspSource
from worker.stream.urls import redact

log = logging.getLogger(__name__)


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
    ) -> None:
        self.camera_id = camera_id
        self.topic = topic
        self.kafka = kafka
        self.quality = quality
        self.min_interval = 1.0 / max_fps if max_fps else 0.0
        self.stop_requested = threading.Event()
        self.metrics = Metrics()
        self.produced = 0
        self.failed = 0
        self._last_sent = 0.0
        self._producer: KafkaProducer | None = None
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
        key, value, headers = encode_frame_message(
            self.camera_id, frame.seq, frame.timestamp, frame.image, self.quality
        )
        assert self._producer is not None
        future = self._producer.send(self.topic, key=key, value=value, headers=headers)
        future.add_callback(lambda _: self._count(ok=True))
        future.add_errback(lambda exc: self._count(ok=False, error=exc))

    def _count(self, ok: bool, error: BaseException | None = None) -> None:
        if ok:
            self.produced += 1
        else:
            self.failed += 1
            log.error("frame not delivered: %s", error)

    def run(self) -> int:
        """Produce until the source ends or stop is requested; 0 if every frame was delivered."""
        self._producer = connect_with_backoff(
            lambda: KafkaProducer(**producer_settings(self.kafka)),
            f"frames producer ({self.kafka.bootstrap_servers})",
            self.stop_requested.is_set,
            max_backoff_s=self.kafka.retry_backoff_max_s,
        )
        if self._producer is None:
            return 1
        self.source.start(self._send)
        while not self.stop_requested.is_set() and not self.source.finished.wait(0.2):
            pass
        self.source.stop()
        self._producer.flush(60)
        self._producer.close(timeout=10)
        log.info("camera %s: %d frames produced, %d failed", self.camera_id, self.produced, self.failed)
        return 1 if self.failed else 0
