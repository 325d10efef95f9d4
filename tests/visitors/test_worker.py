"""The worker as a real process on the real Hamilton clip with visitors on: visit events reach the
real Kafka broker keyed by camera, the store holds the visitors, nobody on the watchlist is one;
a SIGKILL while the broker hangs loses no visit event."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid

from tests.infra._process import wait_until
from tests.infra.worker_process import WorkerProcess
from tests.stream import test_runner as runner
from worker.stream.events import VisitEnded, VisitStarted, parse_event
from worker.visitors.store import VisitorStore

# The runner tests' fixtures: the clip, and a watchlist with the four stills enrolled.
clip = runner.clip
enrolled_store = runner.enrolled_store
workers = runner.workers
FRAMES = 20  # the start of the clip published for the crash test: the wide shot, up to the first scene cut


def test_unknown_people_in_the_clip_become_visitors_with_events_on_kafka(
    kafka_broker, enrolled_store, clip, tmp_path, workers
):
    run = uuid.uuid4().hex[:8]
    events_topic = f"events-{run}"
    kafka_broker.create_topic(events_topic)
    store = tmp_path / "visitors.db"
    config = runner._config(
        enrolled_store,
        tmp_path,
        cameras=[{"id": "hamilton", "url": str(clip), "realtime": False}],
        kafka={"bootstrap_servers": kafka_broker.bootstrap},
        events={"stdout": True, "kafka_topic": events_topic},
        visitors={"enabled": True, "store": str(store), "min_faces": 3},
    )
    worker = WorkerProcess(tmp_path, config).start()
    workers.append(worker)
    assert worker.wait_exit(600) == 0, worker.log_tail()
    printed = worker.events()
    records = runner._consume(kafka_broker.bootstrap, events_topic, expect=len(printed))
    on_kafka = [parse_event(record.value) for record in records]
    visits = [e for e in on_kafka if isinstance(e, VisitStarted | VisitEnded)]
    assert visits, worker.log_tail()
    assert all(record.key == b"hamilton" for record in records)
    assert sorted(e.event_id for e in on_kafka) == sorted(e["event_id"] for e in printed)
    started = {e.visit_id for e in visits if isinstance(e, VisitStarted)}
    ended = {e.visit_id for e in visits if isinstance(e, VisitEnded)}
    assert started == ended  # every visit that started ended (at the end of the clip: shutdown)
    assert all("thumbnail" not in json.dumps(e.model_dump(mode="json")) for e in visits)  # no pixels
    # Matched tracks never became visitors: every stored track ended unknown, with 3+ voting faces.
    unknown = {e["track_id"]: e for e in printed if e["type"] == "track_ended" and e["identity_id"] is None}
    with VisitorStore(store) as visitors:
        tracks = visitors.tracks()
        assert tracks and {t.track_id for t in tracks} <= set(unknown)
        assert all(unknown[t.track_id]["faces_voted"] >= 3 for t in tracks)
        assert {v.id for v in visitors.visits()} == started
        assert len(visitors.visitors()) == len({e.visitor_id for e in visits})


def _clip_start(clip, path, frames: int):
    """The first ``frames`` frames of the clip as a video file of their own (H.264, same rate)."""
    import av

    with av.open(str(clip)) as source, av.open(str(path), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for index, frame in enumerate(source.decode(video)):
            if index == frames:
                break
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode())
    return path


def _store_counts(path) -> dict[str, int]:
    """Rows of the worker's visitor store, read on a connection of our own (WAL: never blocks the worker)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            "tracks": db.execute("SELECT COUNT(*) FROM tracks").fetchone()[0],
            "visits": db.execute("SELECT COUNT(*) FROM visits").fetchone()[0],
            "open": db.execute("SELECT COUNT(*) FROM visits WHERE open = 1").fetchone()[0],
        }
    finally:
        db.close()


def test_visit_events_are_not_lost_when_the_worker_is_killed_before_delivering_them(
    kafka_broker_factory, enrolled_store, clip, tmp_path
):
    """The clip's first 20 frames, its wide shot: its one track that becomes a visitor (the performer,
    7 voting faces, unknown at that size) is still open at the last frame. It ends (the camera went
    silent) while the broker hangs: its visit is stored and ends by the clock, but no visit event
    reaches the broker. SIGKILL, then a restart: the replayed track gives its events again and the
    visit ended by the clock is sent again, with the same ids, and nothing is counted twice. (Before:
    the replay was recognised and gave no events; the ended visit was never sent again.)"""
    broker = kafka_broker_factory()
    run = uuid.uuid4().hex[:8]
    frames, events_topic = f"frames-{run}", f"events-{run}"
    broker.create_topic(frames)
    broker.create_topic(events_topic)
    runner._publish(broker.bootstrap, _clip_start(clip, tmp_path / "start.mp4", FRAMES), frames)
    store = tmp_path / "visitors.db"
    config = runner._config(
        enrolled_store,
        tmp_path,
        kafka={"bootstrap_servers": broker.bootstrap},
        frames={"enabled": True, "topic": frames, "group_id": f"g-{run}", **runner.FAST_GROUP},
        events={"stdout": False, "kafka_topic": events_topic},
        # The camera's tracks close 45 s after its last frame: time to hang the broker first, even when a loaded
        # machine decides the last frames well after they were received (20 s was too short in a CI run).
        tracking={"stale_camera_s": 45},
        visitors={"enabled": True, "store": str(store), "min_faces": 3, "visit_gap_s": 2},
    )
    worker = WorkerProcess(tmp_path, config).start()
    try:
        worker.wait_ready()
        wait_until(
            lambda: worker.metric("facewatch_frames_received") >= FRAMES, 600, "every frame consumed", 0.2,
            alive=worker._alive,
        )  # fmt: skip
        broker.pause()
        try:
            before = _store_counts(store)["tracks"]
            # The silent camera's tracks end now: stored, their visits then ended by the clock; nothing delivered.
            try:
                wait_until(
                    lambda: (c := _store_counts(store))["tracks"] > before and c["open"] == 0, 120,
                    "the wide shot's tracks stored and their visits ended", 0.2, alive=worker._alive,
                )  # fmt: skip
            except TimeoutError:
                raise AssertionError(
                    f"no track ended while the broker hung (store: {_store_counts(store)}); the wide shot's "
                    "tracks must close after the pause (tracking.stale_camera_s)\n" + worker.log_tail()
                ) from None
            counts = _store_counts(store)
            worker.kill()
        finally:
            broker.resume()
        worker.start().wait_ready()
        with VisitorStore(store) as visitors:
            visits = visitors.visits()
        wanted = {(kind, v.id) for v in visits for kind in ("visit_started", "visit_ended")}

        def on_kafka() -> set[tuple[str, str]]:
            records = runner._consume(broker.bootstrap, events_topic, timeout=3.0)
            found = [parse_event(r.value) for r in records]
            return {(e.type, e.visit_id) for e in found if isinstance(e, VisitStarted | VisitEnded)}

        with contextlib.suppress(TimeoutError):  # the assertion below names what is missing
            wait_until(lambda: wanted <= on_kafka(), 300, "every visit's events on the topic", 2.0, alive=worker._alive)
        # The replayed track ends only tracking.stale_camera_s after the replayed frames, and the owed events may
        # be on the topic before that: wait for the replay itself (its count is the assertion below).
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: worker.metric("facewatch_visitor_tracks", {"outcome": "replayed"}) >= 1, 180,
                "the replayed track", 1.0, alive=worker._alive,
            )  # fmt: skip
        replayed = worker.metric("facewatch_visitor_tracks", {"outcome": "replayed"})
        assert worker.terminate() == 0, worker.log_tail()
    finally:
        worker.close()
    missing = wanted - on_kafka()
    assert not missing, f"visit events lost across the crash: {sorted(missing)}"
    assert replayed >= 1  # the restarted worker did replay tracks it had stored
    after = _store_counts(store)
    assert (after["tracks"], after["visits"]) == (counts["tracks"], counts["visits"])  # nothing counted twice
    with VisitorStore(store) as visitors:
        assert visitors.owed_events() == []  # delivered at last: no longer owed
    records = runner._consume(broker.bootstrap, events_topic, timeout=3.0)
    by_id: dict[str, str] = {}
    for record in records:  # a repeated event is the same event (same id, same content)
        assert by_id.setdefault(parse_event(record.value).event_id, record.value.decode()) == record.value.decode()
