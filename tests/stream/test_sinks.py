"""Event sinks: stdout JSON lines, and a Kafka topic on a real broker, with re-sends of what failed."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime

from kafka import KafkaConsumer

from worker.config import KafkaConfig
from worker.kafka_clients import KafkaSender
from worker.obs.metrics import Metrics
from worker.stream.events import TrackEnded, event_id, parse_event, timestamp
from worker.stream.sinks import KafkaSink, StdoutSink


def _ended(camera: str = "cam", track: str = "1000-0") -> TrackEnded:
    return TrackEnded(
        event_id=event_id(camera, track, "ended"),
        camera_id=camera,
        track_id=track,
        model_version="m",
        watchlist_version=1,
        outcome="unknown",
        identity_id=None,
        identity_name=None,
        best_score=None,
        faces=0,
        started_at=timestamp(1.0),
        ended_at=timestamp(2.0),
        duration_s=1.0,
        reason="lost",
    )


def _read(bootstrap: str, topic: str, count: int, timeout_s: float = 20.0) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    records, deadline = [], time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
    finally:
        consumer.close()
    return records


def test_stdout_sink_writes_one_json_object_per_line_and_counts_it():
    metrics = Metrics()
    out = io.StringIO()
    sink = StdoutSink(metrics, out)
    sink.publish(_ended("a"), time.monotonic())
    sink.publish(_ended("b"), time.monotonic())
    assert sink.flush()
    lines = out.getvalue().splitlines()
    assert [parse_event(line).camera_id for line in lines] == ["a", "b"]
    assert (
        metrics.registry.get_sample_value("facewatch_events_published_total", {"sink": "stdout", "type": "track_ended"})
        == 2
    )


def test_kafka_sink_delivers_keyed_events(kafka_broker):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic)
    metrics = Metrics()
    sink = KafkaSink(metrics, KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic, threading.Event())
    try:
        for camera in ("door", "lobby", "door"):
            sink.publish(_ended(camera), time.monotonic())
        assert sink.flush(20) and sink.healthy
    finally:
        sink.close()
    records = _read(kafka_broker.bootstrap, topic, 3)
    assert [r.key for r in records] == [b"door", b"lobby", b"door"]
    assert json.loads(records[1].value)["camera_id"] == "lobby"
    # CloudEvents 1.0, Kafka binding, binary mode: the attributes are headers, the value is the data.
    headers = {name: value.decode() for name, value in records[1].headers}
    assert headers["ce_specversion"] == "1.0" and headers["content-type"] == "application/json"
    assert headers["ce_id"] == json.loads(records[1].value)["event_id"] == event_id("lobby", "1000-0", "ended")
    assert headers["ce_type"] == "dev.facewatch.track_ended.v2"
    assert headers["ce_source"] == "/facewatch/cameras/lobby" and headers["ce_subject"] == "1000-0"
    emitted = datetime.fromisoformat(headers["ce_time"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - emitted).total_seconds()) < 600 and headers["ce_time"].endswith("Z")
    assert (
        metrics.registry.get_sample_value("facewatch_events_published_total", {"sink": "kafka", "type": "track_ended"})
        == 3
    )


def test_a_send_that_fails_is_resent_then_reported_until_it_goes_through(kafka_broker):
    topic = f"resend-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic)
    failures: list[BaseException] = []
    sender = KafkaSender(
        KafkaConfig(bootstrap_servers=kafka_broker.bootstrap),
        "test producer",
        lambda: False,
        failures.append,
        resends=2,
    )
    try:
        sender.send(topic, b"small", key=b"k")
        # Over the producer's max_request_size (16 MiB): the client refuses it every time it is sent.
        sender.send(topic, b"x" * (17 * 1024 * 1024), key=b"big")
        assert not sender.flush(20)
        assert len(failures) == 3 and sender.pending_failures == 1  # first send and two re-sends
        assert not sender.flush(20)  # still held: whoever commits behind it must wait
    finally:
        sender.close()
    assert [r.value for r in _read(kafka_broker.bootstrap, topic, 1)] == [b"small"]


def test_a_sink_without_a_broker_reports_failure_instead_of_hanging():
    stopping = threading.Event()
    stopping.set()  # shutting down before any broker was reached
    metrics = Metrics()
    sink = KafkaSink(metrics, KafkaConfig(bootstrap_servers="127.0.0.1:9"), "events", stopping)
    sink.publish(_ended(), time.monotonic())
    assert not sink.healthy
    assert metrics.registry.get_sample_value("facewatch_event_publish_errors_total", {"sink": "kafka"}) == 1


def test_a_sender_replaces_its_producer_when_the_broker_came_back_empty(kafka_broker_factory):
    # Regression (issue 16, item 2): kafka-python's idempotent producer failed every send for good once
    # the restarted, empty broker no longer knew its producer id; events were never delivered again.
    broker = kafka_broker_factory()
    topic = f"events-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    config = KafkaConfig(bootstrap_servers=broker.bootstrap, retry_backoff_max_s=1.0)
    sender = KafkaSender(config, "test", lambda: False)
    try:
        sender.send(topic, b"before", key=b"k")
        assert sender.flush(20)
        broker.restart()  # memory storage: no topic, no producer ids
        broker.create_topic(topic)
        sender.send(topic, b"after", key=b"k")
        deadline = time.monotonic() + 60
        while not sender.flush(20) and time.monotonic() < deadline:
            pass  # the commit protocol calls flush again every commit interval
        assert sender.pending_failures == 0
    finally:
        sender.close()
    assert [r.value for r in _read(broker.bootstrap, topic, 1)] == [b"after"]
