"""The Kafka frames topic as a source: a consumer group, dead letters, lag, and the commit protocol.

Each message is handed to the commit protocol (worker/stream/commits.py) as it arrives, decoded
into a Frame, and delivered to the pipeline; a bad message goes to the dead-letter topic
(worker/stream/dead_letters.py) and counts as done at once. Every ``commit_interval_s`` (and when
partitions are revoked, and at shutdown) the protocol flushes the outputs and commits what is safe.

Revoked partitions are handed back in order: their cameras are closed (``close_partitions``: the
frames queued before are decided, open tracks end with reason ``checkpoint``, their events go to
the sinks, the cameras' tracking and decision state is forgotten), then the protocol flushes and
commits, and only then does the rebalance go on. kafka-python 3 calls the rebalance listener on
its IO thread, where a blocking call (a commit) fails and a wait would stop the heartbeats; so the
listener is asynchronous and hands the work to a thread of its own, whose commit the IO loop then
carries. Lost partitions (the group evicted this worker) are closed the same way but not
committed (the group no longer accepts this worker's commits): their next owner replays them from
the last commit.

Before the first messages of newly assigned partitions, ``restore`` (worker/stream/cooldowns.py)
seeds the cooldowns from the events topic, so a replay decides as the run before it did.

Health, for /readyz, from what this thread saw (it alone touches the consumer): the broker counts as
reachable while some request succeeded within ``frames.broker_timeout_s`` (records arrived, a commit
went through, or the check that runs after ``frames.broker_check_interval_s`` of silence answered:
``broker_answers`` in worker/kafka_clients.py); the partitions count as fetching while frames arrive
or every assigned partition is caught up, and as stalled after ``frames.fetch_stall_s`` of lag
without a frame.

Two lags per assigned partition: ``facewatch_kafka_consumer_lag``, from this consumer's position (what it
has fetched), and ``facewatch_kafka_consumer_group_lag``, from the group's committed offset, read back
from the broker after each periodic commit (what KEDA's Kafka scaler computes, and what a restart
would replay). Both end at the partition's high-water mark from the last fetch response, which
costs no request (and does not depend on ListOffsets(LATEST), wrong on Tansu). A partition with no
committed offset counts from the start of its log, where this worker begins reading it. The series
of a partition go away when it is no longer assigned here, so a sum over the workers is the group's.

A partition whose position lies past the end of its log lost its data on the broker (the topic was
recreated, or a broker with memory or wiped storage came back empty): it is read again from the
beginning, as a new consumer group would, with fresh commit bookkeeping. Apache Kafka reports
such a fetch as out of range and kafka-python resets it the same way; not every broker does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

from worker.config import FramesConfig, KafkaConfig
from worker.kafka_clients import broker_answers, common_settings, connect_with_backoff
from worker.obs.metrics import Metrics
from worker.stream.commits import KafkaCommits, PartitionKey
from worker.stream.dead_letters import DeadLetters
from worker.stream.frames import BadFrame, KafkaPosition, capture_time, decode_frame_message
from worker.stream.sources.base import Deliver, FrameSource

log = logging.getLogger(__name__)

GROUP_LAG_TIMEOUT_MS = 2000  # reading committed offsets back waits at most this long per request


def consumer_problem(
    frames: FramesConfig,
    now: float,
    last_contact: float | None,
    assigned: int,
    last_fetch: float,
    last_error: str | None,
) -> str | None:
    """What is wrong with a running frames consumer, from what its thread saw (monotonic times), or None."""
    silent = None if last_contact is None else now - last_contact
    if silent is None or silent > frames.broker_timeout_s:
        waited = f" for {silent:.0f} s" if silent is not None else ""
        return f"broker unreachable{waited} ({last_error or 'no answer'})"
    if not assigned:
        return "no partitions assigned"
    stalled = now - last_fetch
    if stalled > frames.fetch_stall_s:
        return f"no frames fetched for {stalled:.0f} s although the partitions have lag"
    return None


ClosePartitions = Callable[[list[PartitionKey], str], bool]  # (partitions, reason) -> closed in time


async def _off_the_io_loop(consumer: KafkaConsumer, name: str, work: Callable[[], None]) -> None:
    """Run blocking ``work`` on a thread of its own; the consumer's IO loop waits for it without blocking.

    The loop carries the heartbeats and the requests ``work`` makes (its commit). kafka-python has no
    public way to await another thread, so the thread wakes the loop through its selector's
    ``call_soon_threadsafe``, the one cross-thread entry the loop has.
    """
    net: Any = consumer._net  # private (see above)
    finished: Future = Future()

    def run() -> None:
        try:
            work()
        except Exception:  # a bug here must not wedge the rebalance
            log.exception("%s failed", name)
        finally:
            net.call_soon_threadsafe(lambda: finished.success(None))

    threading.Thread(target=run, name=name, daemon=True).start()
    await finished


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread, while the source thread waits in ``poll``."""

    def __init__(self, source: KafkaFrameSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        keys = sorted((tp.topic, tp.partition) for tp in revoked)
        if keys:
            await self._hand_back(keys, commit=True)
        log.info("partitions revoked: %s", [partition for _, partition in keys])

    async def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        keys = sorted((tp.topic, tp.partition) for tp in lost)
        if keys:
            await self._hand_back(keys, commit=False)
        log.warning("partitions lost (the group evicted this worker): %s", [partition for _, partition in keys])

    async def _hand_back(self, keys: list[PartitionKey], commit: bool) -> None:
        source = self.source
        consumer = source._consumer
        if consumer is not None:
            await _off_the_io_loop(consumer, "kafka-revoke", lambda: source.hand_back(keys, commit))
        source.commits.revoked(keys)
        source.unrestored.difference_update(keys)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in assigned]
        self.source.commits.assigned(keys)
        self.source.unrestored.update(keys)
        self.source.fetched()  # a fresh assignment has not had its chance to fetch yet
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
        close_partitions: ClosePartitions | None = None,
    ) -> None:
        """``restore(first_frame_time)`` seeds the cooldowns before the first frames of newly assigned partitions;
        ``close_partitions(partitions, reason)`` closes the cameras of revoked ones (Pipeline.close_partitions)."""
        super().__init__()
        self.kafka = kafka
        self.frames = frames
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.commits = commits
        self.dead_letters = dead_letters
        self.restore = restore
        self.close_partitions = close_partitions
        # Assigned, no frame of theirs delivered yet: the source thread's, or the rebalance listener's while the
        # source thread waits in poll.
        self.unrestored: set[PartitionKey] = set()
        self._consumer: KafkaConsumer | None = None
        self.last_error: str | None = None
        # Written by the source thread only; other threads read these plain values.
        self._assigned = 0
        self._last_contact: float | None = None  # the last request to the broker that succeeded
        self._last_fetch = time.monotonic()  # frames arrived, or nothing was left to fetch
        self._next_check = 0.0
        self._committed: dict[TopicPartition, int] = {}  # the group's committed offsets, as last read back
        self._lag_series: set[TopicPartition] = set()  # partitions whose lag gauges this worker exports
        self._closing = False  # close() began: the pipeline is drained, revoked partitions only commit
        self._closed = False

    @property
    def connected(self) -> bool:
        """Broker reachable, partitions assigned and fetching."""
        return self.problem() is None

    def problem(self) -> str | None:
        """Why the frames consumer is not healthy now (for /readyz), or None."""
        if self._closed:
            return "closed"
        if self._consumer is None:
            return self.last_error or "connecting"
        return consumer_problem(
            self.frames, time.monotonic(), self._last_contact, self._assigned, self._last_fetch, self.last_error
        )

    def contact(self) -> None:
        """A request to the broker succeeded (source thread)."""
        self._last_contact = time.monotonic()
        self.last_error = None

    def fetched(self) -> None:
        """Frames arrived, or nothing is left to fetch (source thread)."""
        self._last_fetch = time.monotonic()

    def _check_broker(self) -> None:
        """After ``broker_check_interval_s`` without a successful request, ask the cluster's metadata."""
        now = time.monotonic()
        if self._consumer is None or now < self._next_check:
            return
        interval = self.frames.broker_check_interval_s
        self._next_check = now + interval
        if self._last_contact is not None and now - self._last_contact < interval:
            return
        error = broker_answers(self.kafka, timeout=interval)
        if error is not None:
            self.last_error = f"broker check: {error}"
            log.warning("frames consumer: %s", self.last_error)
            return
        self.contact()

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

        self._consumer = connect_with_backoff(
            create,
            f"frames consumer ({self.kafka.bootstrap_servers})",
            self._stop.is_set,
            failed,
            self.kafka.retry_backoff_max_s,
        )
        if self._consumer is None:
            return False
        self.contact()
        return True

    def _run(self, deliver: Deliver) -> None:
        if not self._connect():
            return
        assert self._consumer is not None
        next_commit = time.monotonic() + self.frames.commit_interval_s
        while not self.stopping:
            self._check_broker()
            try:
                batches = self._consumer.poll(timeout_ms=500)
            except KafkaError as exc:
                self.last_error = f"poll: {exc}"
                log.warning("frames consumer: %s", exc)
                self._stop.wait(1.0)
                continue
            if batches:
                self.contact()
            self._restore_cooldowns(batches)
            for records in batches.values():
                for record in records:
                    if self.stopping:
                        break
                    self.handle(record, deliver)
                    self.fetched()
                    self._check_broker()  # a slow pipeline holds this loop: keep the check on time
            self._assigned = len(self._consumer.assignment())
            self._check_positions()
            if time.monotonic() >= next_commit:
                self.commit()
                self._read_committed()
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

    def _check_positions(self) -> None:
        """Lag per partition; a partition whose log lost its data is read again; caught up counts as fetched."""
        consumer = self._consumer
        if consumer is None:
            return
        caught_up = True
        assignment = set(consumer.assignment())
        self._forget_lag(self._lag_series - assignment)
        for tp in assignment:
            highwater = consumer.highwater(tp)  # from the last fetch response
            try:
                position = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                caught_up = False
                continue
            if highwater is None or position is None:
                caught_up = False
                continue
            if position > highwater:
                self._offsets_lost(tp, position, highwater)
                caught_up = False
                continue
            lag = highwater - position
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            committed = self._committed.get(tp)
            if committed is not None:
                group_lag = max(0, highwater - committed)
                self.metrics.consumer_group_lag.labels(tp.topic, str(tp.partition)).set(group_lag)
            self._lag_series.add(tp)
            caught_up = caught_up and lag == 0
        if caught_up:
            self.fetched()

    def _read_committed(self) -> None:
        """Read the group's committed offsets of the assigned partitions back from the broker (source thread).

        Read back rather than remembered: the group's offset is what KEDA and the partition's next owner see,
        whoever committed it. Without one, the start of the log (this worker reads from the earliest offset).
        A broker that does not answer leaves the last values (a warning is logged by the commit that failed).
        """
        consumer = self._consumer
        if consumer is None:
            return
        fresh: dict[TopicPartition, int] = {}
        uncommitted = []
        try:
            for tp in consumer.assignment():
                offset = consumer.committed(tp, timeout_ms=GROUP_LAG_TIMEOUT_MS)
                if offset is None:
                    uncommitted.append(tp)
                else:
                    fresh[tp] = offset
            if uncommitted:
                fresh.update(consumer.beginning_offsets(uncommitted, timeout_ms=GROUP_LAG_TIMEOUT_MS))
        except KafkaError as exc:
            log.debug("reading the committed offsets back: %s", exc)
        self._committed.update(fresh)

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        """Drop the lag series of partitions no longer assigned here: their new owner exports them."""
        for tp in partitions:
            for gauge in (self.metrics.consumer_lag, self.metrics.consumer_group_lag):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))
            self._committed.pop(tp, None)
        self._lag_series -= partitions

    def _offsets_lost(self, tp: TopicPartition, position: int, end: int) -> None:
        assert self._consumer is not None
        log.warning(
            "frames partition %s/%d: position %d is past the end of its log (%d): the broker lost its data "
            "(topic recreated, or the broker came back empty); reading it again from the beginning",
            tp.topic,
            tp.partition,
            position,
            end,
        )
        self.metrics.kafka_offset_resets.labels(tp.topic, str(tp.partition)).inc()
        key = (tp.topic, tp.partition)
        self.commits.revoked([key])  # the old offsets mean nothing on the new log
        self.commits.assigned([key])
        self._committed.pop(tp, None)  # read back at the next commit
        self.unrestored.add(key)  # its frames start again, as after an assignment
        self._consumer.seek_to_beginning(tp)

    def hand_back(self, partitions: list[PartitionKey], commit: bool = True) -> None:
        """Partitions are taken away: close their cameras (tracks end, reason checkpoint), then commit what is safe.

        Runs on a thread of its own during the rebalance (the source thread waits in poll meanwhile).
        Lost partitions (``commit`` False) commit nothing: the group no longer accepts this worker's commits.
        """
        if self.close_partitions is not None and not self._closing:
            started = time.monotonic()
            numbers = [partition for _, partition in partitions]
            if self.close_partitions(partitions, "checkpoint"):
                log.info("partitions %s: cameras closed in %.1f s", numbers, time.monotonic() - started)
            else:
                log.warning("partitions %s: cameras not closed in time; committing what is safe so far", numbers)
        if commit:
            self.commit(partitions)

    def commit(self, partitions: list[PartitionKey] | None = None) -> bool:
        """Run the commit protocol's flush and commit for these partitions (default: all assigned)."""
        consumer = self._consumer
        if consumer is None:
            return True

        def commit_offsets(offsets: dict[PartitionKey, int]) -> None:
            consumer.commit(
                {TopicPartition(*key): OffsetAndMetadata(offset, "", -1) for key, offset in offsets.items()},
                timeout_ms=int(self.frames.broker_timeout_s * 1000),
            )
            self.contact()

        return self.commits.commit(commit_offsets, partitions)

    def close(self, drain: Callable[[], None] | None = None) -> None:
        """After stop(): let the pipeline finish (``drain``), commit what is safe, close the clients."""
        self._closing = True
        if drain is not None:
            drain()
        if self._consumer is not None:
            self.commit()
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
            self._closed = True
        self.dead_letters.close()
        self.metrics.kafka_connected.set(0)


def _record_time(record: ConsumerRecord) -> float:
    """The earlier of a frame message's capture time and its Kafka timestamp (Unix seconds; now when it has neither)."""
    times = [capture_time(record.headers)]
    if record.timestamp is not None and record.timestamp >= 0:
        times.append(record.timestamp / 1000.0)
    known = [t for t in times if t is not None]
    return min(known) if known else time.time()
