"""The Kafka frames source's handling of each message: into the commit protocol, decoded or dead-lettered."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord

from worker.config import FramesConfig, KafkaConfig
from worker.obs.metrics import Metrics
from worker.stream.commits import KafkaCommits
from worker.stream.dead_letters import DeadLetters
from worker.stream.frames import Frame, KafkaPosition, encode_frame_message
from worker.stream.sources.kafka import KafkaFrameSource

TOPIC = "frames"


def _record(offset: int, key: bytes, value: bytes, headers: list, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, -1, offset, 0, 0, key, value, headers, None, len(key), len(value), -1)


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
