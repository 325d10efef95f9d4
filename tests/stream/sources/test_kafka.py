"""The Kafka frames source's handling of each message: into the commit protocol, decoded or dead-lettered."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.config import FramesConfig, KafkaConfig
from worker.obs.metrics import Metrics
from worker.stream.commits import KafkaCommits
from worker.stream.dead_letters import DeadLetters
from worker.stream.frames import Frame, KafkaPosition, encode_frame_message
from worker.stream.sources.kafka import KafkaFrameSource, _Rebalance

TOPIC = "frames"


def _record(
    offset: int, key: bytes, value: bytes, headers: list, partition: int = 0, timestamp_ms: int = 0
) -> ConsumerRecord:
    return ConsumerRecord(
        TOPIC, partition, -1, offset, timestamp_ms, 0, key, value, headers, None, len(key), len(value), -1
    )


def _source(bootstrap: str, dead_letter_topic: str):
    metrics = Metrics()
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    frames = FramesConfig(topic=TOPIC, dead_letter_topic=dead_letter_topic)
    dead_letters = DeadLetters.from_config(kafka, frames, metrics, threading.Event())
    commits = KafkaCommits(frames.checkpoint_interval, [dead_letters])
    commits.assigned([(TOPIC, 0)])
    return KafkaFrameSource(kafka, frames, 10_000_000, metrics, commits, dead_letters), commits, metrics


def test_good_frames_are_delivered_bad_ones_dead_lettered_and_done(kafka_broker):
    dead_topic = f"dead-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(dead_topic)
    source, commits, metrics = _source(kafka_broker.bootstrap, dead_topic)
    delivered: list[Frame] = []
    image = np.full((48, 64, 3), 128, np.uint8)
    key, value, headers = encode_frame_message("door", 7, 1000.0, image)
    try:
        source.handle(_record(0, key, value, headers), delivered.append)
        source.handle(_record(1, key, b"not a jpeg", headers), delivered.append)
        source.handle(_record(2, key, value, headers, partition=1), delivered.append)  # not assigned here
        (frame,) = delivered
        assert frame.camera_id == "door" and frame.seq == 7 and frame.position == KafkaPosition(TOPIC, 0, 0)
        checkpoints = commits.partition(frame.position)
        assert checkpoints.safe_offset() == 0  # the good frame is in flight: nothing is safe past it
        checkpoints.done(0)  # as the decide stage does once its events are out
        assert checkpoints.safe_offset() == 2  # the bad frame was done at once
        assert source.dead_letters.flush(20)
        labels = {"camera": "door", "reason": "bad"}
        assert metrics.registry.get_sample_value("facewatch_frames_dropped_total", labels) == 1
    finally:
        source.dead_letters.close()

    consumer = KafkaConsumer(dead_topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest")
    records, deadline = [], time.monotonic() + 20
    while not records and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records += batch
    consumer.close()
    (dead,) = records
    headers = dict(dead.headers)
    assert dead.value == b"not a jpeg" and dead.key == b"door"
    assert headers["facewatch_source"] == f"{TOPIC}/0/1".encode() and headers["facewatch_error"]


def _finish(listener_call) -> None:
    """Run a rebalance listener coroutine that awaits nothing (no consumer: no hand-back thread) to its end."""
    try:
        listener_call.send(None)
    except StopIteration:
        return
    raise AssertionError("the listener waited for something")


def test_cooldowns_are_restored_once_before_the_first_frames_of_newly_assigned_partitions():
    metrics = Metrics()
    kafka, frames = KafkaConfig(bootstrap_servers="127.0.0.1:1"), FramesConfig(topic=TOPIC)
    restored: list[float] = []
    dead_letters = DeadLetters.from_config(kafka, frames, metrics, threading.Event())
    commits = KafkaCommits(frames.checkpoint_interval)
    source = KafkaFrameSource(kafka, frames, 10_000_000, metrics, commits, dead_letters, restore=restored.append)
    rebalance = _Rebalance(source)
    image = np.full((48, 64, 3), 128, np.uint8)

    def batch(partition: int, capture: float, published_ms: int) -> dict:
        key, value, headers = encode_frame_message(f"cam-{partition}", 0, capture, image)
        return {TopicPartition(TOPIC, partition): [_record(0, key, value, headers, partition, published_ms)]}

    _finish(rebalance.on_partitions_assigned([TopicPartition(TOPIC, p) for p in range(3)]))
    # One read-back for the partitions whose first frames came in one poll, from the earliest of their times
    # (a frame's capture time, or its Kafka timestamp when that is earlier).
    source._restore_cooldowns(
        {**batch(0, 1000.0, 1_000_500), **batch(1, 999.0, 1_200_000), TopicPartition(TOPIC, 2): []}
    )
    assert restored == [999.0]
    source._restore_cooldowns({**batch(0, 1001.0, 1_001_000), **batch(1, 1002.0, 1_002_000)})
    assert restored == [999.0]  # partitions 0 and 1 are restored already
    source._restore_cooldowns(batch(2, 2000.0, 1_500_000))
    assert restored == [999.0, 1500.0]  # partition 2's first frame came only now
    _finish(rebalance.on_partitions_revoked([TopicPartition(TOPIC, p) for p in range(3)]))
    _finish(rebalance.on_partitions_assigned([TopicPartition(TOPIC, 0)]))  # back after a rebalance: restored again
    source._restore_cooldowns(batch(0, 3000.0, -1))  # no Kafka timestamp: the capture time
    assert restored == [999.0, 1500.0, 3000.0]


def test_consumer_problems_for_readiness():
    # Issue 16, item 2: readiness said nothing of a broker that did not answer, nor of partitions that
    # were assigned but fetched nothing although they had lag.
    from worker.stream.sources.kafka import consumer_problem

    frames = FramesConfig(broker_timeout_s=15.0, fetch_stall_s=60.0)
    assert consumer_problem(frames, 100.0, 95.0, 2, 90.0, None) is None
    unreachable = consumer_problem(frames, 100.0, 80.0, 2, 90.0, "broker check: kafka:9092: ConnectionRefusedError")
    assert unreachable == "broker unreachable for 20 s (broker check: kafka:9092: ConnectionRefusedError)"
    assert consumer_problem(frames, 100.0, None, 2, 90.0, None) == "broker unreachable (no answer)"
    assert consumer_problem(frames, 100.0, 99.0, 0, 90.0, None) == "no partitions assigned"
    stalled = consumer_problem(frames, 200.0, 199.0, 1, 130.0, None)
    assert stalled == "no frames fetched for 70 s although the partitions have lag"


def test_group_lag_gauge_is_the_end_offset_minus_the_committed_offset(kafka_broker):
    # Issue 11, item 5: the worker exported only its own position's lag; KEDA scales on the group's
    # committed offsets, which lag behind the position while frames are in the pipeline.
    from kafka import KafkaProducer

    from tests.infra._process import wait_until
    from tests.infra.kafka_broker import FAST_GROUP_SETTINGS

    topic, group = f"lag-{uuid.uuid4().hex[:8]}", f"lag-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=2)
    image = np.full((48, 64, 3), 128, np.uint8)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for partition, count in ((0, 10), (1, 6)):
        for seq in range(count):
            key, value, headers = encode_frame_message(f"cam-{partition}", seq, 1000.0 + seq, image)
            producer.send(topic, key=key, value=value, headers=headers, partition=partition)
            producer.flush()  # one record per batch: Tansu's ListOffsets(LATEST) is right only then
    producer.close()

    metrics = Metrics()
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap)
    frames = FramesConfig(topic=topic, group_id=group, commit_interval_s=0.2, **FAST_GROUP_SETTINGS)
    dead_letters = DeadLetters.from_config(kafka, frames, metrics, threading.Event())
    commits = KafkaCommits(frames.checkpoint_interval, [dead_letters])
    source = KafkaFrameSource(kafka, frames, 10_000_000, metrics, commits, dead_letters)
    finish_up_to = {0: 4, 1: 6}  # frames at these offsets and later stay in the pipeline: not committable

    def deliver(frame: Frame) -> None:
        assert frame.position is not None
        if frame.position.offset < finish_up_to[frame.position.partition]:
            commits.partition(frame.position).done(frame.position.offset)

    def group_lag(partition: int) -> float | None:
        return metrics.registry.get_sample_value(
            "facewatch_kafka_consumer_group_lag", {"topic": topic, "partition": str(partition)}
        )

    def position_lag(partition: int) -> float | None:
        return metrics.registry.get_sample_value(
            "facewatch_kafka_consumer_lag", {"topic": topic, "partition": str(partition)}
        )

    source.start(deliver)
    try:
        wait_until(lambda: group_lag(0) == 6 and group_lag(1) == 0, 60, "group lag 6 and 0", 0.1)
        assert position_lag(0) == 0 and position_lag(1) == 0  # everything fetched: the position says no lag
    finally:
        source.stop()
        source.close()

    # The same figures from the broker, as KEDA computes them: end offsets minus the group's committed offsets.
    reader = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in (0, 1)]
    ends = reader.end_offsets(partitions)
    committed = {tp: reader.committed(tp) for tp in partitions}
    reader.close()
    assert committed == {partitions[0]: 4, partitions[1]: 6}
    assert {tp.partition: ends[tp] - committed[tp] for tp in partitions} == {0: 6, 1: 0}
