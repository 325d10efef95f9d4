"""The Kafka frames topic as a source: a consumer group, dead letters, safe commits, lag.

Offsets are committed only at safe points (worker/stream/checkpoints.py), after the event sinks
and the dead-letter producer have been flushed: at-least-once, and a replay repeats the same
event ids. A bad message (undecodable, oversized, wrong headers or content type) is copied to
the dead-letter topic with ``facewatch_error`` (reason) and ``facewatch_error_detail`` headers,
counted, and its offset committed like any processed frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from worker.config import FramesConfig, KafkaConfig
from worker.kafka_clients import common_settings, connect_with_backoff, producer_settings
from worker.obs.metrics import Metrics
from worker.stream.checkpoints import PartitionCheckpoints
from worker.stream.frames import BadFrame, KafkaPosition, decode_frame_message
from worker.stream.sinks import EventSink
from worker.stream.sources.base import Deliver, FrameSource

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaFrameSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.source._commit(list(revoked))
        with self.source._lock:
            for tp in revoked:
                self.source._checkpoints.pop((tp.topic, tp.partition), None)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        with self.source._lock:
            for tp in assigned:
                self.source._checkpoints[(tp.topic, tp.partition)] = PartitionCheckpoints(
                    self.source.frames.checkpoint_interval
                )
        self.source.metrics.kafka_connected.set(1)
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class KafkaFrameSource(FrameSource):
    """Consumes frame messages; commits only what is safe; never crashes on broker trouble."""

    name = "kafka"

    def __init__(
        self,
        kafka: KafkaConfig,
        frames: FramesConfig,
        max_pixels: int,
        metrics: Metrics,
        sinks: Sequence[EventSink],
        wait_idle: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__()
        self.kafka = kafka
        self.frames = frames
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.sinks = list(sinks)
        self._consumer: KafkaConsumer | None = None
        self._dead_letters: KafkaProducer | None = None
        self._checkpoints: dict[tuple[str, int], PartitionCheckpoints] = {}
        self._lock = threading.Lock()
        self._assigned = False
        self.last_error: str | None = None
        self.commits_frozen = False
        self._wait_idle = wait_idle

    @property
    def connected(self) -> bool:
        consumer = self._consumer
        return consumer is not None and bool(consumer.assignment())

    def checkpoints_for(self, position: KafkaPosition) -> PartitionCheckpoints | None:
        """The bookkeeping of a frame's partition (None once the partition was revoked)."""
        with self._lock:
            return self._checkpoints.get((position.topic, position.partition))

    def _connect(self) -> bool:
        def create() -> KafkaConsumer:
            consumer = KafkaConsumer(
                **common_settings(self.kafka),
                group_id=self.frames.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.frames.max_poll_records,
                session_timeout_ms=self.frames.session_timeout_ms,
                heartbeat_interval_ms=self.frames.heartbeat_interval_ms,
                max_partition_fetch_bytes=self.frames.max_message_bytes + 65536,
                fetch_max_bytes=max(52428800, self.frames.max_message_bytes + 65536),
            )
            consumer.subscribe([self.frames.topic], listener=_Rebalance(self))
            return consumer

        def failed(message: str) -> None:
            self.last_error = message
            self.metrics.kafka_connected.set(0)

        self._consumer = connect_with_backoff(
            create,
            f"frames consumer ({self.kafka.bootstrap_servers})",
            self._stop.is_set,
            failed,
            self.kafka.retry_backoff_max_s,
        )
        if self._consumer is None:
            return False
        self._dead_letters = connect_with_backoff(
            lambda: KafkaProducer(**producer_settings(self.kafka)),
            "dead-letter producer",
            self._stop.is_set,
            failed,
            self.kafka.retry_backoff_max_s,
        )
        self.last_error = None
        return self._dead_letters is not None

    def _run(self, deliver: Deliver) -> None:
        if not self._connect():
            return
        assert self._consumer is not None
        next_commit = time.monotonic() + self.frames.commit_interval_s
        while not self.stopping:
            try:
                batches = self._consumer.poll(timeout_ms=500)
            except KafkaError as exc:
                self.last_error = f"poll: {exc}"
                log.warning("frames consumer: %s", exc)
                self._stop.wait(1.0)
                continue
            for tp, records in batches.items():
                for record in records:
                    if self.stopping:
                        break
                    self._handle(tp, record, deliver)
            self._update_lag()
            if time.monotonic() >= next_commit:
                self._commit()
                next_commit = time.monotonic() + self.frames.commit_interval_s

    def _handle(self, tp: TopicPartition, record: ConsumerRecord, deliver: Deliver) -> None:
        checkpoints = self.checkpoints_for(KafkaPosition(tp.topic, tp.partition, record.offset))
        if checkpoints is None:  # partition revoked while its records were in hand
            return
        checkpoints.delivered(record.offset)
        camera = (record.key or b"?").decode("utf-8", "replace")[:128]
        self.metrics.frames_received.labels(camera).inc()
        position = KafkaPosition(tp.topic, tp.partition, record.offset)
        try:
            frame = decode_frame_message(
                record.key, record.value, record.headers, self.frames.max_message_bytes, self.max_pixels, position
            )
        except BadFrame as exc:
            self._dead_letter(record, tp, exc)
            self.metrics.frames_dropped.labels(camera, "bad").inc()
            checkpoints.done(record.offset)
            return
        deliver(frame)

    def _dead_letter(self, record: ConsumerRecord, tp: TopicPartition, exc: BadFrame) -> None:
        log.warning("frame %s/%d@%d dead-lettered: %s", tp.topic, tp.partition, record.offset, exc)
        self.metrics.decode_errors.labels(exc.reason).inc()
        self.metrics.dead_letters.labels(exc.reason).inc()
        headers = [
            *(record.headers or []),
            ("facewatch_error", exc.reason.encode()),
            ("facewatch_error_detail", str(exc)[:500].encode()),
            ("facewatch_source", f"{tp.topic}/{tp.partition}/{record.offset}".encode()),
        ]
        assert self._dead_letters is not None
        self._dead_letters.send(
            self.frames.dead_letter_topic, key=record.key, value=record.value, headers=headers
        ).add_errback(lambda error: self._dead_letter_failed(error))

    def _dead_letter_failed(self, error: BaseException) -> None:
        log.error("dead-letter message not delivered: %s", error)
        self.commits_frozen = True

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    def _flush_outputs(self) -> bool:
        ok = all(sink.flush() for sink in self.sinks)
        if self._dead_letters is not None:
            try:
                self._dead_letters.flush(30)
            except KafkaError as exc:
                log.warning("flushing dead letters: %s", exc)
                ok = False
        return ok and not self.commits_frozen

    def _commit(self, partitions: list[TopicPartition] | None = None) -> None:
        """Commit every partition's safe offset, after everything before it was delivered."""
        consumer = self._consumer
        if consumer is None:
            return
        with self._lock:
            wanted = {
                key: checkpoints
                for key, checkpoints in self._checkpoints.items()
                if partitions is None or TopicPartition(*key) in partitions
            }
        offsets = {key: checkpoints.safe_offset() for key, checkpoints in wanted.items()}
        offsets = {key: offset for key, offset in offsets.items() if offset is not None}
        if not offsets:
            return
        if not self._flush_outputs():
            self.commits_frozen = True
            log.error("events or dead letters were not delivered: offsets are not committed (at-least-once)")
            return
        try:
            consumer.commit(
                {TopicPartition(*key): OffsetAndMetadata(offset, "", -1) for key, offset in offsets.items()}
            )
        except KafkaError as exc:
            log.warning("commit failed (will retry): %s", exc)
            return
        for key, offset in offsets.items():
            wanted[key].mark_committed(offset)

    def close(self, drain: Callable[[], None] | None = None) -> None:
        """After stop(): let the pipeline finish (``drain``), commit what is safe, close the clients."""
        if drain is not None:
            drain()
        if self._consumer is not None:
            self._commit()
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
        if self._dead_letters is not None:
            self._dead_letters.close(timeout=10)
        self.metrics.kafka_connected.set(0)
