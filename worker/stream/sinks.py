"""Where events go: stdout as JSON lines, and a Kafka topic keyed by camera id."""

from __future__ import annotations

import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TextIO

from worker.config import EventsConfig, KafkaConfig
from worker.kafka_clients import KafkaSender
from worker.obs.metrics import Metrics
from worker.stream.events import AnyEvent, cloudevent_headers

log = logging.getLogger(__name__)
Event = AnyEvent


class EventSink(ABC):
    """Publishes events; ``flush`` says whether everything published so far was delivered."""

    name: str

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @abstractmethod
    def publish(self, event: Event, frame_received: float) -> None:
        """Send one event; ``frame_received`` (monotonic) is when its frame entered the worker."""

    def publish_confirmed(self, event: Event, frame_received: float, on_delivered: Callable[[], None]) -> None:
        """Send one event; ``on_delivered`` runs (on any thread) once it is delivered. Here: at once, for
        sinks whose ``publish`` returns only when it is delivered."""
        self.publish(event, frame_received)
        on_delivered()

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
    """A Kafka topic, keyed by camera id; connects (and reconnects) with backoff, re-sends failures, never crashes."""

    name = "kafka"

    def __init__(self, metrics: Metrics, config: KafkaConfig, topic: str, stopping: threading.Event) -> None:
        super().__init__(metrics)
        self.topic = topic
        self._sender = KafkaSender(
            config,
            "events producer",
            stopping.is_set,
            on_failure=lambda _: metrics.publish_errors.labels(self.name).inc(),
        )

    @classmethod
    def from_config(cls, metrics: Metrics, kafka: KafkaConfig, events: EventsConfig, stopping: threading.Event):
        """The sink of ``events.kafka_topic`` on the brokers of the ``kafka`` section."""
        if not events.kafka_topic:
            raise ValueError("events.kafka_topic is not set")
        return cls(metrics, kafka, events.kafka_topic, stopping)

    def publish(self, event: Event, frame_received: float) -> None:
        self.publish_confirmed(event, frame_received, lambda: None)

    def publish_confirmed(self, event: Event, frame_received: float, on_delivered: Callable[[], None]) -> None:
        def delivered() -> None:
            self._delivered(event, frame_received)
            on_delivered()

        self._sender.send(
            self.topic,
            event.model_dump_json().encode(),
            key=event.camera_id.encode(),
            headers=cloudevent_headers(event),
            on_delivered=delivered,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        return self._sender.flush(timeout)

    @property
    def healthy(self) -> bool:
        return self._sender.pending_failures == 0

    def close(self) -> None:
        self._sender.close()
