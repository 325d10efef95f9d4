"""The visitor stage on real face embeddings (LFW): visitors, visits, retention with a fake clock,
erasure from another process, opt-out, replays; and the bytes on disk after a purge."""

from __future__ import annotations

import numpy as np
import pytest

from tests.realdata import shared_data
from worker.config import Settings, VisitorsConfig
from worker.obs.metrics import Metrics
from worker.recognition import FaceRecognizer
from worker.stream.events import VisitEnded, VisitStarted
from worker.stream.visitors import VisitorStage, VisitorTrack
from worker.vision.image import load_image
from worker.visitors.store import VisitorStore

HOUR = 3600.0
T0 = 1_780_000_000.0  # frame time of the first track


@pytest.fixture(scope="module")
def faces() -> dict[str, np.ndarray]:
    """Three real people, three photos each: name -> (3, 128) embeddings."""
    folders = [f for f in sorted((shared_data() / "lfw" / "images").iterdir()) if len(list(f.glob("*.jpg"))) >= 3]
    recognizer = FaceRecognizer(Settings())
    people = {}
    for folder in folders[:3]:
        images = [load_image(p) for p in sorted(folder.glob("*.jpg"))[:3]]
        analysed = recognizer.analyze(images)
        people[folder.name] = np.stack([f.embeddings[f.largest()] for f in analysed])
    return people


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_stage(tmp_path, clock: Clock, **overrides) -> VisitorStage:
    config = VisitorsConfig(visit_gap_s=600, retention_hours=12, **overrides)
    return VisitorStage(config, VisitorStore(tmp_path / "visitors.db"), Metrics(), clock=clock, idle=lambda: 0.0)


def track(embedding: np.ndarray, start: float, camera: str = "door", seq: int = 0, faces: int = 5) -> VisitorTrack:
    return VisitorTrack(camera, f"{int(start * 1000)}-{seq}", start, start + 30, embedding, faces)


def kinds(events) -> list[tuple[str, str, bool]]:
    return [(e.type, e.visitor_id, e.returning) for e in events]


def test_one_person_is_one_visitor_and_comes_back_after_the_gap(tmp_path, faces):
    (a, b, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    first = stage.track_ended(track(a[0], T0))
    assert len(first) == 1 and isinstance(first[0], VisitStarted) and not first[0].returning
    visitor = first[0].visitor_id
    assert stage.track_ended(track(a[1], T0 + 100)) == []  # within the gap: the same visit goes on
    other = stage.track_ended(track(b[0], T0 + 120, seq=1))
    assert kinds(other) == [("visit_started", other[0].visitor_id, False)] and other[0].visitor_id != visitor
    back = stage.track_ended(track(a[2], T0 + 2 * HOUR))  # after the gap: both open visits end first
    assert [(e.type, e.visitor_id == visitor, e.returning) for e in back] == [
        ("visit_ended", True, False),
        ("visit_ended", False, False),
        ("visit_started", True, True),
    ]
    ended = back[0]
    assert isinstance(ended, VisitEnded) and ended.tracks == 2 and ended.dwell_s == pytest.approx(130)
    assert {v.visitor_id for v in stage.store.visits()} == {visitor, other[0].visitor_id}
    closing = stage.close()
    assert [(e.type, e.reason) for e in closing] == [("visit_ended", "shutdown")]


def _files(tmp_path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("visitors.db"))


def test_retention_deletes_embeddings_from_the_index_and_the_bytes_on_disk(tmp_path, faces):
    (a, b, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    stage.track_ended(track(a[0], T0))
    stage.track_ended(track(b[0], T0 + 11 * HOUR, seq=1))
    stage.store.checkpoint()
    a_track = a[0].astype("<f4").tobytes()
    a_centroid = a[0].astype("<f8").tobytes()
    assert a_track in _files(tmp_path) and a_centroid in _files(tmp_path)  # the check below can fail
    clock.now = T0 + 12.5 * HOUR  # A last seen 12.5 h ago (retention 12 h), B 1.5 h ago
    stage.tick()
    assert len(stage.clusters) == 1 and stage.store.stats()["tracks"] == 1
    data = _files(tmp_path)
    assert a_track not in data and a_centroid not in data
    assert b[0].astype("<f4").tobytes() in data
    # The visit stays (no embedding in it) for the reports; A coming back is a new visitor now.
    assert len(stage.store.visits()) == 2
    again = stage.track_ended(track(a[1], T0 + 13 * HOUR, seq=2))
    started = [e for e in again if isinstance(e, VisitStarted)]
    assert len(started) == 1 and not started[0].returning
    assert started[0].visitor_id not in {v.visitor_id for v in stage.store.visits()[:1]}


def test_a_visitor_forgotten_by_another_process_is_gone_before_the_next_write(tmp_path, faces):
    (a, _, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    visitor = stage.track_ended(track(a[0], T0))[0].visitor_id
    with VisitorStore(tmp_path / "visitors.db") as cli:  # `facewatch visitors forget`, another connection
        assert cli.forget(visitor)
    assert a[0].astype("<f4").tobytes() not in _files(tmp_path)
    events = stage.track_ended(track(a[1], T0 + 60))
    assert [e.type for e in events] == ["visit_started"] and events[0].visitor_id != visitor
    assert visitor not in stage.clusters and stage.store.visitor(visitor) is None
    assert not stage.store.visits(visitor_id=visitor) and not stage.store.visitor_tracks(visitor)


def test_opted_out_people_are_never_counted(tmp_path, faces):
    (a, b, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0))
    with VisitorStore(tmp_path / "visitors.db") as cli:
        cli.opt_out_add(a[:1])
    assert stage.track_ended(track(a[1], T0)) == []  # another photo of the same person
    assert len(stage.track_ended(track(b[0], T0 + 60, seq=1))) == 1
    assert stage.store.stats()["visitors"] == 1
    assert stage.metrics.visitor_tracks.labels("opted_out")._value.get() == 1


def test_replays_watchlist_people_and_short_tracks_are_not_counted_again(tmp_path, faces):
    (a, _, c) = faces.values()
    stage = make_stage(tmp_path, Clock(T0), min_faces=3)
    once = track(a[0], T0)
    first = stage.track_ended(once)
    assert len(first) == 1
    restarted = make_stage(tmp_path, Clock(T0))  # a worker restarted after a crash replays the track
    assert restarted.track_ended(once) == first  # its events again (they may never have left), counted once
    assert restarted.metrics.visitor_tracks.labels("replayed")._value.get() == 1
    assert len(restarted.visits.open_visits()) == 1  # the open visit came back from the store
    assert stage.track_ended(track(c[0], T0 + 5, seq=1, faces=2)) == []
    watched = VisitorTrack("door", "x-1", T0, T0 + 1, c[1], 5, matched_watchlist=True)
    assert stage.track_ended(watched) == []
    assert stage.store.stats()["tracks"] == 1


def test_a_write_that_races_a_forget_is_refused_and_redone_without_the_forgotten_visitor(tmp_path, faces):
    (a, _, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0))
    visitor = stage.track_ended(track(a[0], T0))[0].visitor_id
    with VisitorStore(tmp_path / "visitors.db") as cli:
        cli.forget(visitor)  # lands after the stage's last look at the change log
    assert visitor in stage.clusters
    assert stage._record(track(a[1], T0 + 60)) is None  # joined the forgotten visitor: the store refused it
    assert visitor not in stage.clusters and stage.store.visitor(visitor) is None
    events = stage._record(track(a[1], T0 + 60))
    assert events is not None and events[0].visitor_id != visitor
    assert stage.store.visitor(visitor) is None and not stage.store.visitor_tracks(visitor)


def test_a_regular_visitor_keeps_only_the_faces_of_the_retention_window(tmp_path, faces):
    (a, _, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    visitor = stage.track_ended(track(a[0], T0))[0].visitor_id
    assert stage.track_ended(track(a[1], T0 + 10 * HOUR))[-1].visitor_id == visitor
    stage.store.checkpoint()
    both = (a[0].astype(np.float64) + a[1].astype(np.float64)).astype("<f8").tobytes()
    assert a[0].astype("<f4").tobytes() in _files(tmp_path) and both in _files(tmp_path)  # the checks can fail
    clock.now = T0 + 12.5 * HOUR  # the first track is past retention, the second is not
    stage.tick()
    kept = stage.store.visitor(visitor)
    assert kept is not None and (kept.weight, kept.tracks) == (1.0, 1)
    # Its centroid is now the second track's alone: the first face left the sum, the file and the index.
    assert np.allclose(kept.centroid_sum, a[1], atol=1e-6)
    assert np.allclose(stage.clusters.get(visitor).centroid, a[1], atol=1e-6)
    data = _files(tmp_path)
    assert a[0].astype("<f4").tobytes() not in data
    assert both not in data


def test_walking_on_to_another_zone_is_the_same_trip_not_a_return(tmp_path, faces):
    (a, _, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0), zones={"entrance": ["door"], "floor": ["floor-1", "floor-2"]})
    first = stage.track_ended(track(a[0], T0))
    onward = stage.track_ended(track(a[1], T0 + 60, camera="floor-2"))
    assert [(e.zone, e.returning) for e in first + onward] == [("entrance", False), ("floor", False)]
    assert onward[0].visitor_id == first[0].visitor_id and onward[0].camera_id == "floor-2"
    later = stage.track_ended(track(a[2], T0 + 3 * HOUR, camera="floor-1"))
    assert [(e.type, e.zone, e.returning) for e in later][-1] == ("visit_started", "floor", True)


def test_a_replayed_track_gives_the_very_events_it_caused_and_the_store_counts_it_once(tmp_path, faces):
    (a, b, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0))
    stage.track_ended(track(a[0], T0))
    stage.track_ended(track(b[0], T0 + 60, seq=1))
    back = track(a[1], T0 + 2 * HOUR)  # ends both open visits (gap) and starts a returning visit
    caused = stage.track_ended(back)
    assert [(e.type, getattr(e, "reason", None)) for e in caused] == [
        ("visit_ended", "gap"),
        ("visit_ended", "gap"),
        ("visit_started", None),
    ]
    counts = stage.store.stats()
    # A crash before the frame's events were delivered: the restarted worker replays the track.
    restarted = make_stage(tmp_path, Clock(T0 + 2 * HOUR))
    again = restarted.track_ended(back)
    assert [e.model_dump() for e in again] == [e.model_dump() for e in caused]  # same ids, same content
    assert restarted.store.stats() == counts  # nothing counted twice
    assert restarted.owed() == []  # a track's events go out with its frame, not from the outbox of owed ones


def test_visits_ended_by_the_clock_or_at_shutdown_are_owed_until_delivered_and_survive_a_restart(tmp_path, faces):
    (a, b, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    stage.track_ended(track(a[0], T0))
    stage.track_ended(track(b[0], T0 + 500, seq=1))
    stage._event_time = T0 + 700  # frame time: A's visit (ended T0 + 30) is past the 600 s gap, B's is not
    ended = stage.tick()
    assert [(e.type, e.reason) for e in ended] == [("visit_ended", "gap")]
    assert [e.event_id for e in make_stage(tmp_path, clock).owed()] == [ended[0].event_id]  # a crash here
    shutdown = stage.close()
    assert [(e.type, e.reason) for e in shutdown] == [("visit_ended", "shutdown")]
    owed = make_stage(tmp_path, clock).owed()
    assert [e.model_dump() for e in owed] == [e.model_dump() for e in ended + shutdown]
    stage.delivered([ended[0].event_id])
    assert [e.event_id for e in make_stage(tmp_path, clock).owed()] == [shutdown[0].event_id]
    stage.delivered([shutdown[0].event_id])
    assert make_stage(tmp_path, clock).owed() == []


def test_forget_and_retention_delete_the_kept_events_too(tmp_path, faces):
    (a, b, _) = faces.values()
    clock = Clock(T0)
    stage = make_stage(tmp_path, clock)
    forgotten = stage.track_ended(track(a[0], T0))[0].visitor_id
    kept = stage.track_ended(track(b[0], T0 + 60, seq=1))[0].visitor_id
    stage.close()  # both visits end at shutdown: owed events of both
    assert stage.store.stats()["outbox"] == 4
    with VisitorStore(tmp_path / "visitors.db") as cli:
        assert cli.forget(forgotten)
    assert {e.visitor_id for e in make_stage(tmp_path, clock).owed()} == {kept}
    assert stage.store.stats()["outbox"] == 2
    clock.now = T0 + 13 * HOUR  # past retention: the track and its events go; the owed one waits for delivery
    stage.purge()
    assert stage.store.stats()["outbox"] == 1 and stage.store.stats()["tracks"] == 0
    assert [e.visitor_id for e in stage.owed()] == [kept]


def test_the_visitor_thread_sends_what_a_crash_left_owed_and_clears_what_was_delivered(tmp_path, faces):
    import io
    import json

    from worker.stream.sinks import StdoutSink
    from worker.stream.visitors import VisitorThread

    (a, _, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0))
    stage.track_ended(track(a[0], T0))
    owed = stage.close()  # as if the worker died before any sink confirmed these
    restarted = make_stage(tmp_path, Clock(T0))
    out = io.StringIO()
    thread = VisitorThread(restarted, [StdoutSink(Metrics(), out)], Metrics())
    assert thread.close(30)
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["event_id"] for p in printed] == [owed[0].event_id]  # sent again at start; no visit was open
    assert make_stage(tmp_path, Clock(T0)).owed() == []  # delivered: no longer owed


def test_a_store_of_schema_1_is_upgraded(tmp_path):
    import sqlite3

    VisitorStore(tmp_path / "visitors.db").close()
    with sqlite3.connect(tmp_path / "visitors.db") as db:
        db.execute("DROP TABLE outbox")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with VisitorStore(tmp_path / "visitors.db") as store:
        assert store.stats()["outbox"] == 0 and store.owed_events() == []


def test_with_no_sink_nothing_stays_owed(tmp_path, faces):
    from worker.stream.visitors import VisitorThread

    (a, _, _) = faces.values()
    stage = make_stage(tmp_path, Clock(T0))
    stage.track_ended(track(a[0], T0))
    thread = VisitorThread(stage, [], Metrics())
    assert thread.close(30)
    assert make_stage(tmp_path, Clock(T0)).owed() == []
