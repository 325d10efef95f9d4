"""The dead-letter topic: bad frame messages, copied as they came with headers saying why.

A bad message (undecodable, oversized, wrong headers or content type) is sent to the dead-letter
topic with ``facewatch_error`` (the reason), ``facewatch_error_detail`` and ``facewatch_source``
(topic/partition/offset) headers, and counted. It is an output of the commit protocol
(worker/stream/commits.py): its offset is committed only once the dead letter was delivered.
"""

from __future__ import annotations

import logging
import threading

from kafka.consumer.fetcher import ConsumerRecord

from worker.config import FramesConfig, KafkaConfig
from worker.kafka_clients import KafkaSender
from worker.obs.metrics import Metrics
from worker.stream.frames import BadFrame

log = logging.getLogger(__name__)


class DeadLetters:
    """Copies bad frame messages to the dead-letter topic; flushes (and re-sends) for the commit protocol."""

    name = "dead-letters"

    def __init__(self, kafka: KafkaConfig, topic: str, metrics: Metrics, stopping: threading.Event) -> None:
        self.topic = topic
        self.metrics = metrics
        self._sender = KafkaSender(kafka, "dead-letter producer", stopping.is_set)

    @classmethod
    def from_config(
        cls, kafka: KafkaConfig, frames: FramesConfig, metrics: Metrics, stopping: threading.Event
    ) -> DeadLetters:
        """Dead letters of the ``frames`` section's topic."""
        return cls(kafka, frames.dead_letter_topic, metrics, stopping)

    def send(self, record: ConsumerRecord, error: BadFrame) -> None:
        """Copy ``record`` to the dead-letter topic with the reason in its headers, and count it."""
        log.warning("frame %s/%d@%d dead-lettered: %s", record.topic, record.partition, record.offset, error)
        self.metrics.decode_errors.labels(error.reason).inc()
        self.metrics.dead_letters.labels(error.reason).inc()
        headers = [
            *(record.headers or []),
            ("facewatch_error", error.reason.encode()),
            ("facewatch_error_detail", str(error)[:500].encode()),
            ("facewatch_source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        self._sender.send(self.topic, record.value, key=record.key, headers=headers)

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver every dead letter sent so far (re-sending failures); True when all arrived."""
        return self._sender.flush(timeout)

    @property
    def healthy(self) -> bool:
        """False while a dead letter that failed waits for a re-send."""
        return self._sender.pending_failures == 0

    def close(self) -> None:
        """Deliver what is pending and close the producer."""
        self._sender.close()
