"""Where events go: stdout as JSON lines, and a Kafka topic keyed by camera id."""

from __future__ import annotations

import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from typing import TextIO

from kafka import KafkaProducer

from worker.config import KafkaConfig
from worker.kafka_clients import connect_with_backoff, producer_settings
from worker.obs.metrics import Metrics
from worker.stream.events import FaceMatch, TrackEnded

log = logging.getLogger(__name__)
Event = FaceMatch | TrackEnded


class EventSink(ABC):
    """Publishes events; ``flush`` says whether everything published so far was delivered."""

    name: str

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @abstractmethod
    def publish(self, event: Event, frame_received: float) -> None:
        """Send one event; ``frame_received`` (monotonic) is when its frame entered the worker."""

    @abstractmethod
    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for delivery of what was published; False if anything failed or timed out."""

    @property
    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        """Deliver what is pending and release resources."""
        self.flush()

    def _delivered(self, event: Event, frame_received: float) -> None:
        self.metrics.events_published.labels(self.name, event.type).inc()
        self.metrics.frame_to_event_seconds.observe(time.monotonic() - frame_received)


class StdoutSink(EventSink):
    """One JSON object per line."""

    name = "stdout"

    def __init__(self, metrics: Metrics, stream: TextIO | None = None) -> None:
        super().__init__(metrics)
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def publish(self, event: Event, frame_received: float) -> None:
        line = event.model_dump_json() + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()
        self._delivered(event, frame_received)

    def flush(self, timeout: float = 30.0) -> bool:
        with self._lock:
            self.stream.flush()
        return True


class KafkaSink(EventSink):
    """A Kafka topic, keyed by camera id; connects (and reconnects) with backoff, never crashes."""

    name = "kafka"

    def __init__(self, metrics: Metrics, config: KafkaConfig, topic: str, stopping: threading.Event) -> None:
        super().__init__(metrics)
        self.config = config
        self.topic = topic
        self._stopping = stopping
        self._producer: KafkaProducer | None = None
        self._connect_lock = threading.Lock()
        self._failures = 0
        self._failures_lock = threading.Lock()

    def _ensure_producer(self) -> KafkaProducer | None:
        with self._connect_lock:
            if self._producer is None:
                self._producer = connect_with_backoff(
                    lambda: KafkaProducer(**producer_settings(self.config)),
                    f"events producer ({self.config.bootstrap_servers})",
                    self._stopping.is_set,
                    max_backoff_s=self.config.retry_backoff_max_s,
                )
            return self._producer

    def publish(self, event: Event, frame_received: float) -> None:
        producer = self._ensure_producer()
        if producer is None:  # shutting down before a broker was ever reached
            self._failed(event, RuntimeError("no broker reachable"))
            return
        future = producer.send(self.topic, key=event.camera_id.encode(), value=event.model_dump_json().encode())
        future.add_callback(lambda _: self._delivered(event, frame_received))
        future.add_errback(lambda exc: self._failed(event, exc))

    def _failed(self, event: Event, exc: BaseException) -> None:
        log.error("event %s not delivered to %s: %s", event.event_id, self.topic, exc)
        self.metrics.publish_errors.labels(self.name).inc()
        with self._failures_lock:
            self._failures += 1

    def flush(self, timeout: float = 30.0) -> bool:
        if self._producer is not None:
            try:
                self._producer.flush(timeout)
            except Exception as exc:  # kafka-python raises its own timeout types here
                log.warning("flushing events to %s: %s", self.topic, exc)
                return False
        with self._failures_lock:
            return self._failures == 0

    @property
    def healthy(self) -> bool:
        with self._failures_lock:
            return self._failures == 0

    def close(self) -> None:
        if self._producer is not None:
            self.flush()
            self._producer.close(timeout=10)
