"""The streaming worker end to end, as a real process, on the real Hamilton clip with the stills enrolled.

File, Kafka (real Tansu broker) and RTSP (real GStreamer server) sources; a crash (SIGKILL) and
restart with at-least-once delivery; an RTSP server that dies and comes back; poison frames that
go to the dead-letter topic while the rest is processed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.infra._process import wait_until
from tests.infra.bombs import jpeg_claiming
from tests.infra.worker_process import WorkerProcess
from worker.config import Settings
from worker.runtime.device import cpu_has_bf16

MIRANDA = "Lin-Manuel Miranda"
STILLS = {
    MIRANDA: "lin-manuel-miranda.png",
    "Alex Lacamoire": "alex-lacamoire.png",
    "Barack Obama": "obama.jpg",
    "Joe Biden": "biden.jpg",
}
NOT_IN_VIEW = "Joe Biden"
CLIP_FRAMES = 275
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> Path:
    return shared_dir / "data" / "video" / "short_hamilton_clip.mp4"


@pytest.fixture(scope="module")
def enrolled_store(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A watchlist with one still of each of the four people enrolled."""
    from worker.config import Settings
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.store import WatchlistStore

    store_path = tmp_path_factory.mktemp("watchlist") / "watchlist.db"
    recognizer = FaceRecognizer(Settings())
    with WatchlistStore(store_path) as store:
        enroller = Enroller(recognizer, store, EnrollRules(largest=True))
        for name, still in STILLS.items():
            report = enroller.enroll(name, [shared_dir / "data" / "stills" / still])
            assert report.accepted, f"{still} was not enrolled: {report.as_dict()}"
    return store_path


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


def _config(store: Path, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A worker config: the enrolled watchlist (copied, so tests do not share an index file), events on stdout."""
    private = tmp_path / "watchlist.db"
    if not private.exists():
        private.write_bytes(store.read_bytes())
    config: dict[str, Any] = {"watchlist": {"store": str(private)}, "events": {"stdout": True}}
    config.update(sections)
    return config


def _matches(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        if event["type"] == "face_match":
            counts[event["identity_name"]] = counts.get(event["identity_name"], 0) + 1
    return counts


def _assert_consistent(events: list[dict[str, Any]]) -> None:
    """Every event parses against the models; a match's track also ends; ids repeat only for the same event."""
    from worker.stream.events import parse_event

    for event in events:
        parse_event(json.dumps(event))
    by_id: dict[str, tuple] = {}
    for event in events:
        key = (event["type"], event["camera_id"], event["track_id"], event.get("identity_id"))
        assert by_id.setdefault(event["event_id"], key) == key, f"event_id {event['event_id']} reused"
    ended = {(e["camera_id"], e["track_id"]) for e in events if e["type"] == "track_ended"}
    for event in events:
        if event["type"] == "face_match":
            assert (event["camera_id"], event["track_id"]) in ended, f"track of {event} never ended"


def _publish(broker_bootstrap: str, clip: Path, topic: str, camera: str = "hamilton") -> None:
    argv = [sys.executable, "-m", "worker", "publish", str(clip), "--camera", camera, "--topic", topic]
    done = subprocess.run(
        [*argv, "--fast", "--bootstrap", broker_bootstrap, "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr


def _consume(bootstrap: str, topic: str, expect: int | None = None, timeout: float = 10.0) -> list[Any]:
    """Every record of a topic from the beginning (waits up to ``timeout`` for ``expect`` records)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=2000, group_id=None,
    )  # fmt: skip
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            records += list(consumer)
            if expect is None or len(records) >= expect:
                break
    finally:
        consumer.close()
    return records


def test_file_source_matches_miranda_and_nobody_out_of_view(enrolled_store, clip, tmp_path, workers):
    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    worker = WorkerProcess(tmp_path, _config(enrolled_store, tmp_path, cameras=[camera])).start()
    workers.append(worker)
    assert worker.wait_exit(600) == 0, worker.log_tail()  # a file camera ends, and so does the worker
    events = worker.events()
    matches = _matches(events)
    assert matches.get(MIRANDA, 0) >= 1, f"no FaceMatch for {MIRANDA}: {matches}\n{worker.log_tail()}"
    assert NOT_IN_VIEW not in matches
    _assert_consistent(events)
    miranda = [e for e in events if e["type"] == "face_match" and e["identity_name"] == MIRANDA]
    assert all(e["thumbnail_jpeg_base64"] is None for e in miranda)  # no face pixels unless configured
    assert all(e["distance"] <= Settings().watchlist.match_threshold and e["watchlist_version"] >= 4 for e in miranda)


def test_a_restarted_camera_does_not_announce_again_who_was_announced_just_before(
    kafka_broker, enrolled_store, clip, tmp_path, workers
):
    # Regression (issue 16, item 10): a worker restarted on a camera it reads directly forgot that Miranda had
    # been announced on it a moment before, and announced her again within decisions.cooldown_s.
    from kafka import KafkaProducer

    from worker.stream.events import FaceMatch, event_id, timestamp
    from worker.watchlist.store import WatchlistStore

    events_topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(events_topic)
    with WatchlistStore(enrolled_store) as store:
        miranda = next(i.id for i in store.list_identities() if i.name == MIRANDA)
    now = time.time()
    before = FaceMatch(
        event_id=event_id("hamilton", "earlier-0", miranda), camera_id="hamilton", track_id="earlier-0",
        model_version="m", watchlist_version=1, identity_id=miranda, identity_name=MIRANDA, score=0.9,
        distance=0.3, confidence=0.99, threshold=0.5, faces=2, box=[1, 2, 3, 4], first_seen=timestamp(now - 2),
        last_seen=timestamp(now - 1),
        frame_timestamp=timestamp(now - 1), frame_width=640, frame_height=480, frame_seq=0,
    )  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    producer.send(events_topic, key=b"hamilton", value=before.model_dump_json().encode())
    producer.flush()
    producer.close()

    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    config = _config(
        enrolled_store, tmp_path, cameras=[camera], kafka={"bootstrap_servers": kafka_broker.bootstrap},
        events={"stdout": True, "kafka_topic": events_topic},
    )  # fmt: skip
    worker = WorkerProcess(tmp_path, config).start()
    workers.append(worker)
    assert worker.wait_exit(600) == 0, worker.log_tail()
    events = worker.events()
    recognised = [e for e in events if e["type"] == "track_ended" and e["identity_name"] == MIRANDA]
    assert recognised, f"Miranda was not recognised at all: {events}\n{worker.log_tail()}"
    assert MIRANDA not in _matches(events), "announced again within the cooldown of the announcement before"
    _assert_consistent(events)


def test_kafka_path_with_poison_frames_dead_lettered(kafka_broker, enrolled_store, clip, tmp_path, workers):
    from kafka import KafkaProducer

    from worker.stream.frames import encode_frame_message

    run = uuid.uuid4().hex[:8]
    frames, events_topic, dead = f"frames-{run}", f"events-{run}", f"frames-dead-{run}"
    for topic in (frames, events_topic, dead):
        kafka_broker.create_topic(topic)
    # Poison first, then the clip: a bad message must not hold back the frames behind it.
    import numpy as np

    key, value, headers = encode_frame_message("hamilton", 0, time.time(), np.zeros((8, 8, 3), np.uint8))
    poison = [
        (key, b"\xff\xd8 this is no JPEG", headers),  # undecodable
        (key, value, [h for h in headers if h[0] != "capture_ts_ms"]),  # a header missing
        (key, value, [(n, b"image/png" if n == "content_type" else v) for n, v in headers]),  # wrong type
        (key, jpeg_claiming(7900, 7900), headers),  # headers say 8x8: refused from the JPEG's header, not decoded
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for k, v, h in poison:
        producer.send(frames, key=k, value=v, headers=h)
    producer.flush()
    producer.close()
    _publish(kafka_broker.bootstrap, clip, frames)

    config = _config(
        enrolled_store,
        tmp_path,
        kafka={"bootstrap_servers": kafka_broker.bootstrap},
        frames={"enabled": True, "topic": frames, "dead_letter_topic": dead, "group_id": f"g-{run}", **FAST_GROUP},
        events={"stdout": False, "kafka_topic": events_topic},
    )
    worker = WorkerProcess(tmp_path, config).start()
    workers.append(worker)
    worker.wait_ready()
    wait_until(
        lambda: worker.metric("facewatch_frames_received") >= CLIP_FRAMES, 600, "all frames received", 1.0,
        alive=worker._alive,
    )  # fmt: skip
    wait_until(lambda: worker.metric("facewatch_kafka_consumer_lag") == 0, 120, "lag at zero", 1.0)
    assert worker.metric("facewatch_dead_letter_messages", {"reason": "oversized"}) == 1
    # The default embedder.precision, auto: bf16 search with fp32 checks on a CPU with bfloat16 units.
    precision = "bf16+fp32-check" if cpu_has_bf16() else "fp32"
    assert worker.metric("facewatch_device_info", {"precision": precision}) == 1
    assert worker.terminate() == 0, worker.log_tail()

    events = [json.loads(record.value) for record in _consume(kafka_broker.bootstrap, events_topic)]
    assert all(record.key == b"hamilton" for record in _consume(kafka_broker.bootstrap, events_topic))
    matches = _matches(events)
    assert matches.get(MIRANDA, 0) >= 1, f"{matches}\n{worker.log_tail()}"
    assert NOT_IN_VIEW not in matches
    _assert_consistent(events)

    dead_letters = _consume(kafka_broker.bootstrap, dead, expect=4)
    assert len(dead_letters) == 4
    reasons = [dict(r.headers)["facewatch_error"].decode() for r in dead_letters]
    assert reasons == ["undecodable", "missing_header", "content_type", "oversized"], reasons
    assert [r.value for r in dead_letters] == [v for _, v, _ in poison]  # the original bytes, for inspection
    assert worker.events() == []  # stdout sink was off


def test_sigkill_and_restart_loses_nothing_and_repeats_event_ids(kafka_broker, enrolled_store, clip, tmp_path):
    run = uuid.uuid4().hex[:8]
    frames = f"frames-{run}"
    kafka_broker.create_topic(frames)
    _publish(kafka_broker.bootstrap, clip, frames)

    def worker_for(group: str, folder: Path) -> WorkerProcess:
        folder.mkdir()
        config = _config(
            enrolled_store,
            folder,
            kafka={"bootstrap_servers": kafka_broker.bootstrap},
            frames={"enabled": True, "topic": frames, "group_id": group, "checkpoint_interval": 40, **FAST_GROUP},
        )
        return WorkerProcess(folder, config)

    def drain(worker: WorkerProcess, frames: int) -> None:
        # Frames counted rather than lag: Tansu's end offsets are low (environment.md), so its lag reads 0 early.
        wait_until(
            lambda: worker.metric("facewatch_frames_received") >= frames, 600, f"{frames} frames consumed", 1.0,
            alive=worker._alive,
        )  # fmt: skip
        wait_until(lambda: worker.http("/readyz")[0] == 200, 60, "idle and ready", 0.5)
        time.sleep(3)  # the last frames' decisions and a commit

    reference = worker_for(f"ref-{run}", tmp_path / "reference").start()
    try:
        reference.wait_ready()
        drain(reference, CLIP_FRAMES)
        assert reference.terminate() == 0, reference.log_tail()
    finally:
        reference.close()
    expected = {e["event_id"]: e for e in reference.events()}
    assert _matches(list(expected.values())).get(MIRANDA, 0) >= 1

    crashed = worker_for(f"crash-{run}", tmp_path / "crashed").start()
    try:
        crashed.wait_ready()
        # Crash mid-stream, once some events are out and some frames are still to come.
        wait_until(lambda: len(crashed.events()) >= 2, 600, "first events", 0.2, alive=crashed._alive)
        assert crashed.metric("facewatch_frames_received") < CLIP_FRAMES
        crashed.kill()
        crashed.start().wait_ready()
        # The restarted worker replays from the last safe commit; wait until it has seen the clip's end.
        with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
            wait_until(
                lambda: set(expected) <= {e["event_id"] for e in crashed.events()}, 300, "every reference event", 1.0,
                alive=crashed._alive,
            )  # fmt: skip
        assert crashed.terminate() == 0, crashed.log_tail()
    finally:
        crashed.close()
    seen = crashed.events()
    ids = [e["event_id"] for e in seen]
    missing = set(expected) - set(ids)
    assert not missing, f"events lost across the crash: {[expected[i] for i in missing]}"
    for event in seen:
        if event["event_id"] in expected:
            want = expected[event["event_id"]]
            assert (event["type"], event["track_id"], event.get("identity_id")) == (
                want["type"], want["track_id"], want.get("identity_id"),
            )  # fmt: skip
    _assert_consistent(seen)


def test_rtsp_source_matches_miranda(rtsp_server_factory, enrolled_store, clip, tmp_path, workers):
    server = rtsp_server_factory(clip)
    camera = {"id": "stage", "url": server.url}
    worker = WorkerProcess(tmp_path, _config(enrolled_store, tmp_path, cameras=[camera])).start()
    workers.append(worker)
    worker.wait_ready()
    wait_until(lambda: MIRANDA in _matches(worker.events()), 300, "a FaceMatch over RTSP", 0.5, alive=worker._alive)
    assert worker.terminate() == 0, worker.log_tail()
    events = worker.events()
    assert NOT_IN_VIEW not in _matches(events)
    _assert_consistent(events)  # the shutdown closed every open track
    assert {e["camera_id"] for e in events} == {"stage"}


def test_rtsp_server_restart_worker_reconnects(rtsp_server_factory, enrolled_store, clip, tmp_path, workers):
    server = rtsp_server_factory(clip)
    camera = {"id": "door", "url": server.url}
    worker = WorkerProcess(tmp_path, _config(enrolled_store, tmp_path, cameras=[camera])).start()
    workers.append(worker)
    worker.wait_ready()
    wait_until(lambda: worker.metric("facewatch_frames_received") > 10, 120, "frames flowing", 0.5)

    server.kill()
    wait_until(lambda: worker.http("/readyz")[0] == 503, 60, "not ready while the camera is down", 0.5)
    assert worker.metric("facewatch_camera_connected", {"camera": "door"}) == 0
    down_at = worker.metric("facewatch_frames_received")
    time.sleep(3)  # retrying with backoff, not crashing
    assert worker.running

    server.start()
    worker.wait_ready(timeout=120)
    wait_until(lambda: worker.metric("facewatch_frames_received") > down_at + 10, 120, "frames again", 0.5)
    assert worker.metric("facewatch_rtsp_reconnects", {"camera": "door"}) >= 1
    assert worker.terminate() == 0, worker.log_tail()


def _ms(iso: str) -> int:
    """Unix milliseconds of an event's ISO 8601 timestamp."""
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The group's committed offset of partition 0 (None before the first commit)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def test_commits_advance_past_a_camera_that_went_silent(kafka_broker, enrolled_store, clip, tmp_path, workers):
    # Regression (issue 16, item 1): camera A's tracks, closed when A went silent, were never recorded
    # as closed, so their birth offset held the partition's commits back for good while B streamed on.
    run = uuid.uuid4().hex[:8]
    frames, group = f"frames-{run}", f"g-{run}"
    kafka_broker.create_topic(frames)
    _publish(kafka_broker.bootstrap, clip, frames, camera="camera-a")
    _publish(kafka_broker.bootstrap, clip, frames, camera="camera-b")
    config = _config(
        enrolled_store,
        tmp_path,
        kafka={"bootstrap_servers": kafka_broker.bootstrap},
        frames={"enabled": True, "topic": frames, "group_id": group, "commit_interval_s": 0.5, **FAST_GROUP},
        tracking={"stale_camera_s": 1.0},
        events={"stdout": False},
    )
    worker = WorkerProcess(tmp_path, config).start()
    workers.append(worker)
    worker.wait_ready()
    wait_until(
        lambda: worker.metric("facewatch_frames_received") >= 2 * CLIP_FRAMES, 600, "all frames received", 1.0,
        alive=worker._alive,
    )  # fmt: skip
    # While the worker still runs (no shutdown commit): the committed offset moves into B's frames.
    wait_until(
        lambda: (_committed(kafka_broker.bootstrap, group, frames) or 0) > CLIP_FRAMES, 120,
        "a commit past camera A's frames", 1.0, alive=worker._alive,
    )  # fmt: skip
    assert worker.terminate() == 0, worker.log_tail()


def test_a_restarted_worker_keeps_the_cooldowns_of_the_run_before(kafka_broker, enrolled_store, clip, tmp_path):
    # Regression (issue 16, item 10): a worker restarted after a crash replayed from the committed
    # offset with empty cooldowns and announced again tracks that the uninterrupted run held back.
    # With checkpoints every 40 frames, the clip's one Miranda track is cut in four; the first is
    # announced and the next three are held back by the 60 s cooldown.
    from kafka import KafkaProducer

    run = uuid.uuid4().hex[:8]
    staged = f"frames-staged-{run}"
    kafka_broker.create_topic(staged)
    _publish(kafka_broker.bootstrap, clip, staged)
    records = _consume(kafka_broker.bootstrap, staged, expect=CLIP_FRAMES)
    assert len(records) == CLIP_FRAMES
    offset_at = {int(dict(r.headers)["capture_ts_ms"]): i for i, r in enumerate(records)}

    def copy(topic: str, start: int, stop: int) -> None:
        """The staged frames [start, stop) onto ``topic``, bytes and headers as they were: both runs see one clip."""
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        for record in records[start:stop]:
            producer.send(topic, key=record.key, value=record.value, headers=record.headers)
        producer.flush()
        producer.close()

    def worker_for(name: str) -> tuple[WorkerProcess, str, str]:
        frames, events, folder = f"frames-{name}-{run}", f"events-{name}-{run}", tmp_path / name
        kafka_broker.create_topic(frames)
        kafka_broker.create_topic(events)
        folder.mkdir()
        config = _config(
            enrolled_store,
            folder,
            kafka={"bootstrap_servers": kafka_broker.bootstrap},
            frames={
                "enabled": True, "topic": frames, "group_id": f"g-{name}-{run}", "checkpoint_interval": 40,
                "commit_interval_s": 0.5, **FAST_GROUP,
            },
            events={"stdout": False, "kafka_topic": events},
        )  # fmt: skip
        return WorkerProcess(folder, config), frames, events

    def finish(worker: WorkerProcess, frames: int) -> None:
        worker.wait_ready()
        wait_until(
            lambda: worker.metric("facewatch_frames_received") >= frames, 600, f"{frames} frames consumed", 1.0,
            alive=worker._alive,
        )  # fmt: skip
        wait_until(lambda: worker.http("/readyz")[0] == 200, 60, "idle and ready", 0.5)
        time.sleep(3)  # the last frames' decisions and a commit
        assert worker.terminate() == 0, worker.log_tail()

    reference, frames, events = worker_for("reference")
    copy(frames, 0, CLIP_FRAMES)
    try:
        finish(reference.start(), CLIP_FRAMES)
    finally:
        reference.close()
    expected = [json.loads(r.value) for r in _consume(kafka_broker.bootstrap, events)]
    announced = {e["track_id"] for e in expected if e["type"] == "face_match"}
    held_back = [
        e for e in expected if e["type"] == "track_ended" and e["identity_id"] and e["track_id"] not in announced
    ]
    assert held_back, f"the clip no longer has a track held back by the cooldown: {expected}"
    first_held = held_back[0]
    born_ms = int(first_held["track_id"].split("-")[0])
    born = offset_at[born_ms]
    holder = max(  # the frame of the announcement that held it back
        offset_at[_ms(e["frame_timestamp"])]
        for e in expected
        if e["type"] == "face_match"
        and e["identity_id"] == first_held["identity_id"]
        and _ms(e["frame_timestamp"]) < born_ms
    )
    # The crashed run gets the frames up to the held-back track's birth, commits past the announcement that held
    # it back, and dies: the restart replays that track with the announcement behind the committed offset.
    crashed, frames, events = worker_for("crashed")
    copy(frames, 0, born + 1)
    group = f"g-crashed-{run}"
    try:
        crashed.start().wait_ready()
        wait_until(
            lambda: (_committed(kafka_broker.bootstrap, group, frames) or 0) > holder, 300,
            f"a commit past offset {holder}", 0.5, alive=crashed._alive,
        )  # fmt: skip
        crashed.kill()
        committed = _committed(kafka_broker.bootstrap, group, frames)
        assert committed is not None and holder < committed <= born
        copy(frames, born + 1, CLIP_FRAMES)
        finish(crashed.start(), CLIP_FRAMES - committed)
    finally:
        crashed.close()
    seen = [json.loads(r.value) for r in _consume(kafka_broker.bootstrap, events)]

    def matches(found: list[dict[str, Any]]) -> dict[str, tuple]:
        # Replays legitimately send an event again: the same event_id, the same decision.
        return {e["event_id"]: (e["track_id"], e["identity_id"]) for e in found if e["type"] == "face_match"}

    assert matches(seen) == matches(expected), f"reference: {matches(expected)}\nafter the crash: {matches(seen)}"
    _assert_consistent(seen)


def test_the_svm_decides_in_the_worker_open_set(shared_dir, clip, tmp_path, workers):
    """watchlist.classifier svm in a real worker: Miranda (enrolled from the clip) named, nobody else.

    Besides him the list holds six LFW people with three photos each, none of them in the clip: the
    faces of the band and the audience are strangers to it.
    """
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.store import WatchlistStore

    store_path = tmp_path / "watchlist.db"
    lfw = shared_dir / "data" / "lfw" / "images"
    people = [folder for folder in sorted(lfw.iterdir()) if len(list(folder.glob("*.jpg"))) >= 3][:6]
    enrolled = subprocess.run(
        [sys.executable, "-m", "worker", "watchlist", "--store", str(store_path), "add", MIRANDA, str(clip)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # the dominant track of the clip: his close shot
    assert enrolled.returncode == 0, enrolled.stderr
    with WatchlistStore(store_path) as store:
        enroller = Enroller(FaceRecognizer(Settings()), store, EnrollRules(largest=True))
        for folder in people:
            enroller.enroll(folder.name, sorted(folder.glob("*.jpg"))[:3])
        counts = [identity.templates for identity in store.list_identities()]
        assert len(counts) == 7 and min(counts) >= 3, counts
    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    config = {
        "watchlist": {"store": str(store_path), "classifier": "svm"},
        "events": {"stdout": True},
        "cameras": [camera],
    }
    worker = WorkerProcess(tmp_path, config).start()
    workers.append(worker)
    assert worker.wait_exit(600) == 0, worker.log_tail()
    assert "svm: trained on version" in worker.log_tail(200)
    matches = _matches(worker.events())
    assert set(matches) == {MIRANDA}, f"{matches}\n{worker.log_tail()}"


def test_a_trained_model_runs_the_worker_under_its_own_model_version(shared_dir, clip, tmp_path, workers):
    """embedder.model in a real worker: its events carry its model_version and no dlib-calibrated confidence;
    a worker of dlib's ResNet refuses the watchlist it enrolled (templates of two models are never compared)."""
    from tests.embed.test_trained_model import save_random_nn4
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.store import WatchlistStore

    model = save_random_nn4(tmp_path / "nn4.pt")
    store_path = tmp_path / "watchlist.db"
    trained = {
        "embedder": {"model": str(model)},
        "watchlist": {"store": str(store_path), "match_threshold": 0.3, "unknown_threshold": 0.4},
    }
    recognizer = FaceRecognizer(Settings(**trained))
    version = recognizer.embedder.model_version
    with WatchlistStore(store_path) as store:
        report = Enroller(recognizer, store, EnrollRules(largest=True)).enroll(
            MIRANDA, [shared_dir / "data" / "stills" / STILLS[MIRANDA]]
        )
        assert report.accepted and store.model_version == version

    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    worker = WorkerProcess(tmp_path, {**trained, "events": {"stdout": True}, "cameras": [camera]}, name="trained")
    workers.append(worker.start())
    assert worker.wait_exit(600) == 0, worker.log_tail()
    events = worker.events()
    assert {e["type"] for e in events} >= {"track_started", "track_ended"}, worker.log_tail()
    assert {e["model_version"] for e in events} == {version}
    assert all(e["confidence"] is None for e in events if e["type"] == "face_match")
    _assert_consistent(events)

    dlib = WorkerProcess(tmp_path, {"watchlist": {"store": str(store_path)}, "cameras": [camera]}, name="dlib")
    workers.append(dlib.start())
    assert dlib.wait_exit(300) != 0
    assert "re-enroll" in dlib.log_tail(), dlib.log_tail()
