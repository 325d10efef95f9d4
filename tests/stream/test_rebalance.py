"""Two worker replicas on a two-partition frames topic, and a third that joins mid-stream (a rebalance).

Real broker (Tansu), real worker processes, the Hamilton clip as two cameras, one per partition.
kafka-python's eager rebalance takes every partition from every member, so the join hands both
partitions back: each must be committed where its owner stopped (no frame read twice) and its
cameras closed, so whoever reads on decides as an uninterrupted worker did.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

from tests.infra._process import wait_until
from tests.infra.worker_process import WorkerProcess
from tests.stream import test_runner
from tests.stream.test_runner import CLIP_FRAMES, FAST_GROUP, MIRANDA, _config, _consume, _ms, _publish

clip = test_runner.clip  # the module fixtures: the Hamilton clip, and a watchlist with the stills enrolled
enrolled_store = test_runner.enrolled_store

CAMERAS = ("cam-left", "cam-right")  # partition 0 and partition 1


def _committed(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, partition))
    finally:
        consumer.close()


def _face_matches(events: list[dict[str, Any]]) -> dict[str, tuple]:
    """face_match events by event_id (a replay repeats an event with the same id and decision)."""
    return {
        e["event_id"]: (e["camera_id"], e["track_id"], e["identity_id"]) for e in events if e["type"] == "face_match"
    }


def test_a_replica_joining_mid_stream_reads_no_frame_twice_and_decides_as_one_worker(
    kafka_broker, enrolled_store, clip, tmp_path
):
    # Regression: the commit in on_partitions_revoked ran on kafka-python's IO thread and always failed
    # ("Cannot block on net.run() from the IO thread itself"), so each rebalance replayed the frames since the
    # last periodic commit, into trackers that still held their tracks when the same worker got a partition back.
    from kafka import KafkaProducer

    run = uuid.uuid4().hex[:8]
    bootstrap = kafka_broker.bootstrap
    staged: dict[str, list[Any]] = {}
    for camera in CAMERAS:  # one clip per camera, published once: every run below reads the same bytes
        topic = f"staged-{camera}-{run}"
        kafka_broker.create_topic(topic)
        _publish(bootstrap, clip, topic, camera=camera)
        staged[camera] = _consume(bootstrap, topic, expect=CLIP_FRAMES)
        assert len(staged[camera]) == CLIP_FRAMES
    frames_in = len(CAMERAS) * CLIP_FRAMES

    def copy(producer: KafkaProducer, topic: str, start: int, stop: int, pace_s: float = 0.0) -> None:
        """Frames [start, stop) of both cameras, camera i onto partition i, interleaved as live cameras are."""
        for index in range(start, stop):
            for partition, camera in enumerate(CAMERAS):
                record = staged[camera][index]
                producer.send(topic, key=record.key, value=record.value, headers=record.headers, partition=partition)
            if pace_s:
                producer.flush()
                time.sleep(pace_s)
        producer.flush()

    def worker_for(name: str, topic: str, events: str, group: str) -> WorkerProcess:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        config = _config(
            enrolled_store,
            folder,
            kafka={"bootstrap_servers": bootstrap},
            frames={"enabled": True, "topic": topic, "group_id": group, "commit_interval_s": 0.5, **FAST_GROUP},
            events={"stdout": True, "kafka_topic": events},
        )
        return WorkerProcess(folder, config, name=name)

    def received(workers: list[WorkerProcess]) -> float:
        return sum(w.metric("facewatch_frames_received") for w in workers)

    # The reference: one worker, every frame, no rebalance.
    ref_frames, ref_events = f"frames-ref-{run}", f"events-ref-{run}"
    kafka_broker.create_topic(ref_frames, partitions=2)
    kafka_broker.create_topic(ref_events)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    copy(producer, ref_frames, 0, CLIP_FRAMES)
    reference = worker_for("reference", ref_frames, ref_events, f"g-ref-{run}").start()
    try:
        reference.wait_ready()
        wait_until(
            lambda: received([reference]) >= frames_in, 900, "the reference read every frame", 1.0,
            alive=reference._alive,
        )  # fmt: skip
        wait_until(lambda: reference.http("/readyz")[0] == 200, 60, "idle and ready", 0.5)
        time.sleep(3)  # the last frames' decisions
        assert reference.terminate() == 0, reference.log_tail()
    finally:
        reference.close()
    expected = _face_matches(reference.events())
    assert {camera for camera, _, _ in expected.values()} == set(CAMERAS), f"{expected}\n{reference.log_tail()}"

    # The replicas join the rebalance only once Miranda was announced on both cameras: a track cut by a revocation
    # before its announcement would be announced under another track id, and the comparison would mean nothing.
    offset_of = {
        camera: {int(dict(r.headers)["capture_ts_ms"]): i for i, r in enumerate(staged[camera])} for camera in CAMERAS
    }
    first_announced = max(
        offset_of[e["camera_id"]][_ms(e["frame_timestamp"])] for e in reference.events() if e["type"] == "face_match"
    )
    head = first_announced + 10
    assert head < CLIP_FRAMES - 100, f"Miranda is announced too late in the clip ({first_announced}) for this test"

    frames, events, group = f"frames-{run}", f"events-{run}", f"g-{run}"
    kafka_broker.create_topic(frames, partitions=2)
    kafka_broker.create_topic(events)
    replicas = [worker_for(f"replica-{i}", frames, events, group) for i in range(3)]
    try:
        for replica in replicas[:2]:
            replica.start()
        for replica in replicas[:2]:
            replica.wait_ready()  # each owns a partition
        copy(producer, frames, 0, head)
        wait_until(
            lambda: {e["camera_id"] for r in replicas for e in r.events() if e["type"] == "face_match"} == set(CAMERAS),
            900, "Miranda announced on both cameras", 1.0,
        )  # fmt: skip

        # The rest of the clip streams in while the third replica starts and joins.
        copied = threading.Event()
        streamer = threading.Thread(target=lambda: (copy(producer, frames, head, CLIP_FRAMES, 0.25), copied.set()))
        streamer.start()
        replicas[2].start()
        wait_until(
            lambda: "partitions assigned" in replicas[2].log_path.read_text(errors="replace"), 300,
            "the third replica in the group", 0.5, alive=replicas[2]._alive,
        )  # fmt: skip
        assert not copied.is_set(), "the stream ended before the rebalance: it was not mid-stream"
        streamer.join()

        wait_until(lambda: received(replicas) >= frames_in, 900, "every frame read", 1.0)
        time.sleep(5)  # the last frames' decisions; a frame read twice would have come by now
        read = {replica.name: replica.metric("facewatch_frames_received") for replica in replicas}
        for replica in replicas:
            assert replica.terminate() == 0, replica.log_tail()  # the shutdown closes the last tracks and commits
    finally:
        producer.close()
        for replica in replicas:
            replica.close()

    assert sum(read.values()) == frames_in, f"frames read {read}, {frames_in} in: some were read twice"
    committed = [_committed(bootstrap, group, frames, partition) for partition in range(2)]
    assert committed == [CLIP_FRAMES, CLIP_FRAMES], f"committed offsets {committed}"
    logs = "".join(replica.log_tail(200_000) for replica in replicas)
    assert "commit failed" not in logs  # e.g. "Cannot block on net.run() from the IO thread itself"

    seen = [json.loads(record.value) for record in _consume(bootstrap, events)]
    twice = {event_id: n for event_id, n in Counter(e["event_id"] for e in seen).items() if n > 1}
    assert not twice, f"events published twice: {twice}"
    assert _face_matches(seen) == expected, f"reference: {expected}\nwith the rebalance: {_face_matches(seen)}"
    ended = [e for e in seen if e["type"] == "track_ended"]
    assert {e["camera_id"] for e in ended if e["identity_name"] == MIRANDA} == set(CAMERAS)
