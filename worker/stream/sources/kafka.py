"""The Kafka frames topic as a source: a consumer group, dead letters, lag, and the commit protocol.

Each message is handed to the commit protocol (worker/stream/commits.py) as it arrives, decoded
into a Frame, and delivered to the pipeline; a bad message goes to the dead-letter topic
(worker/stream/dead_letters.py) and counts as done at once. Every ``commit_interval_s`` (and when
partitions are revoked, and at shutdown) the protocol flushes the outputs and commits what is safe.
Before the first messages of newly assigned partitions, ``restore`` (worker/stream/cooldowns.py)
seeds the cooldowns from the events topic, so a replay decides as the run before it did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from worker.config import FramesConfig, KafkaConfig
from worker.kafka_clients import common_settings, connect_with_backoff
from worker.obs.metrics import Metrics
from worker.stream.commits import KafkaCommits, PartitionKey
from worker.stream.dead_letters import DeadLetters
from worker.stream.frames import BadFrame, KafkaPosition, capture_time, decode_frame_message
from worker.stream.sources.base import Deliver, FrameSource

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaFrameSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in revoked]
        self.source.commit(keys)
        self.source.commits.revoked(keys)
        self.source.unrestored.difference_update(keys)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in assigned]
        self.source.commits.assigned(keys)
        self.source.unrestored.update(keys)
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
        commits: KafkaCommits,
        dead_letters: DeadLetters,
        restore: Callable[[float], None] | None = None,
    ) -> None:
        """``restore(first_frame_time)`` seeds the cooldowns before the first frames of newly assigned partitions."""
        super().__init__()
        self.kafka = kafka
        self.frames = frames
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.commits = commits
        self.dead_letters = dead_letters
        self.restore = restore
        self.unrestored: set[PartitionKey] = set()  # assigned, no frame of theirs delivered yet (source thread only)
        self._consumer: KafkaConsumer | None = None
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        consumer = self._consumer
        return consumer is not None and bool(consumer.assignment())

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
        self.last_error = None
        return True

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
            self._restore_cooldowns(batches)
            for records in batches.values():
                for record in records:
                    if self.stopping:
                        break
                    self.handle(record, deliver)
            self._update_lag()
            if time.monotonic() >= next_commit:
                self.commit()
                next_commit = time.monotonic() + self.frames.commit_interval_s

    def _restore_cooldowns(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Before the first records of newly assigned partitions: one read-back of the events topic for all of them."""
        firsts = [records[0] for records in batches.values() if records]
        firsts = [record for record in firsts if (record.topic, record.partition) in self.unrestored]
        if not firsts:
            return
        self.unrestored.difference_update((record.topic, record.partition) for record in firsts)
        if self.restore is not None:
            self.restore(min(_record_time(record) for record in firsts))

    def handle(self, record: ConsumerRecord, deliver: Deliver) -> None:
        """One message: into the commit protocol, then decoded and delivered, or dead-lettered."""
        position = KafkaPosition(record.topic, record.partition, record.offset)
        checkpoints = self.commits.delivered(position)
        if checkpoints is None:  # partition revoked while its records were in hand
            return
        camera = self.metrics.camera_label((record.key or b"").decode("utf-8", "replace"))
        self.metrics.frames_received.labels(camera).inc()
        try:
            frame = decode_frame_message(
                record.key, record.value, record.headers, self.frames.max_message_bytes, self.max_pixels, position
            )
        except BadFrame as exc:
            self.dead_letters.send(record, exc)
            self.metrics.frames_dropped.labels(camera, "bad").inc()
            checkpoints.done(record.offset)
            return
        deliver(frame)

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

    def commit(self, partitions: list[PartitionKey] | None = None) -> bool:
        """Run the commit protocol's flush and commit for these partitions (default: all assigned)."""
        consumer = self._consumer
        if consumer is None:
            return True

        def commit_offsets(offsets: dict[PartitionKey, int]) -> None:
            consumer.commit(
                {TopicPartition(*key): OffsetAndMetadata(offset, "", -1) for key, offset in offsets.items()}
            )

        return self.commits.commit(commit_offsets, partitions)

    def close(self, drain: Callable[[], None] | None = None) -> None:
        """After stop(): let the pipeline finish (``drain``), commit what is safe, close the clients."""
        if drain is not None:
            drain()
        if self._consumer is not None:
            self.commit()
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
        self.dead_letters.close()
        self.metrics.kafka_connected.set(0)


def _record_time(record: ConsumerRecord) -> float:
    """The earlier of a frame message's capture time and its Kafka timestamp (Unix seconds; now when it has neither)."""
    times = [capture_time(record.headers)]
    if record.timestamp is not None and record.timestamp >= 0:
        times.append(record.timestamp / 1000.0)
    known = [t for t in times if t is not None]
    return min(known) if known else time.time()
