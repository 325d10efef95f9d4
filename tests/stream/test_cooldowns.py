"""Reading the cooldowns back from the events topic (real broker): which records count, and failures."""

from __future__ import annotations

import json
import logging
import uuid

from kafka import KafkaProducer

from tests.infra._process import free_port
from worker.config import KafkaConfig
from worker.obs.metrics import Metrics
from worker.stream.cooldowns import CooldownRestore, RestoreFailed, read_announcements
from worker.stream.decisions import Announcement
from worker.stream.events import FaceMatch, TrackEnded, event_id, timestamp


def _match(camera: str, track: str, identity: str, at: float) -> FaceMatch:
    return FaceMatch(
        event_id=event_id(camera, track, identity), camera_id=camera, track_id=track, model_version="m",
        watchlist_version=1, identity_id=identity, identity_name="Ada", score=0.9, distance=0.3, confidence=0.99,
        threshold=0.5, faces=2,
        box=[1, 2, 3, 4], first_seen=timestamp(at - 1), last_seen=timestamp(at), frame_timestamp=timestamp(at),
        frame_width=640, frame_height=480, frame_seq=0,
    )  # fmt: skip


def _ended(camera: str, track: str, at: float) -> TrackEnded:
    return TrackEnded(
        event_id=event_id(camera, track, "ended"), camera_id=camera, track_id=track, model_version="m",
        watchlist_version=1, outcome="matched", identity_id="id-ada", identity_name="Ada", best_score=0.9, faces=3,
        started_at=timestamp(at), ended_at=timestamp(at + 1), duration_s=1.0, reason="lost",
    )  # fmt: skip


def _v1_match(camera: str, track: str, identity: str, at: float) -> bytes:
    """A face_match as schema version 1 had it (no frame size or sequence number): published before an upgrade."""
    event = json.loads(_match(camera, track, identity, at).model_dump_json())
    for added in ("frame_width", "frame_height", "frame_seq"):
        del event[added]
    return json.dumps(event | {"schema_version": 1}).encode()


def _topic_with_events(broker) -> str:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=2)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for key, value in [
        (b"door", _match("door", "100000-0", "id-ada", 100.0).model_dump_json().encode()),  # before the window
        (b"door", _match("door", "1000000-0", "id-ada", 1000.0).model_dump_json().encode()),
        (b"door", _ended("door", "1000000-0", 1001.0).model_dump_json().encode()),  # no announcement
        (b"hall", _match("hall", "1005000-0", "id-bob", 1005.0).model_dump_json().encode()),
        (b"gate", _v1_match("gate", "1006000-0", "id-cy", 1006.0)),  # from before the upgrade to schema v2
        (b"hall", b"{not an event"),  # somebody else's record on our topic
    ]:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return topic


def test_face_matches_since_a_time_are_read_back_from_every_partition(kafka_broker):
    topic = _topic_with_events(kafka_broker)
    found, skipped = read_announcements(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic, since=900.0)
    assert sorted(found, key=lambda a: a.frame_time) == [
        Announcement("door", "id-ada", 1000.0, event_id("door", "1000000-0", "id-ada")),
        Announcement("hall", "id-bob", 1005.0, event_id("hall", "1005000-0", "id-bob")),
        Announcement("gate", "id-cy", 1006.0, event_id("gate", "1006000-0", "id-cy")),
    ]
    assert skipped == 1


def test_a_topic_with_nothing_published_yet_restores_nothing(kafka_broker):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic)
    assert read_announcements(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap), topic, since=0.0) == ([], 0)


def test_restore_hands_the_announcements_over_and_counts(kafka_broker, caplog):
    topic = _topic_with_events(kafka_broker)
    metrics, handed = Metrics(), []
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap)
    restore = CooldownRestore(kafka, topic, cooldown_s=60, margin_s=40, remember=handed.extend, metrics=metrics)
    caplog.set_level(logging.WARNING, logger="worker.stream.cooldowns")
    restore(1000.0)  # from 900 on: the three recent announcements
    assert sorted(a.camera_id for a in handed) == ["door", "gate", "hall"]
    sample = metrics.registry.get_sample_value
    assert sample("facewatch_cooldown_restores_total", {"outcome": "restored"}) == 1
    assert sample("facewatch_cooldown_announcements_restored_total") == 3
    assert sample("facewatch_cooldown_unreadable_records_total") == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"cooldowns: 1 record(s) of {topic} are no facewatch event; skipped"
    ]


def test_an_unreachable_broker_is_one_warning_and_the_worker_goes_on(caplog):
    metrics, handed = Metrics(), []
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}")
    try:
        read_announcements(kafka, "events", since=0.0, timeout_s=1.0)
    except RestoreFailed as exc:
        assert "cannot connect" in str(exc)
    else:
        raise AssertionError("no broker, yet the read succeeded")
    restore = CooldownRestore(kafka, "events", 60, 60, handed.extend, metrics, timeout_s=1.0)
    restore(1000.0)  # no exception: frames go on without the cooldowns
    assert handed == []
    assert metrics.registry.get_sample_value("facewatch_cooldown_restores_total", {"outcome": "failed"}) == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "worker.stream.cooldowns"]
    assert warning.startswith("cooldowns not restored from events: cannot connect") and "\n" not in warning
