"""The worker as a real process on the real Hamilton clip with visitors on: visit events reach the
real Kafka broker keyed by camera, the store holds the visitors, nobody on the watchlist is one."""

from __future__ import annotations

import json
import uuid

from tests.infra.worker_process import WorkerProcess
from tests.stream import test_runner as runner
from worker.stream.events import VisitEnded, VisitStarted, parse_event
from worker.visitors.store import VisitorStore

# The runner tests' fixtures: the clip, and a watchlist with the four stills enrolled.
clip = runner.clip
enrolled_store = runner.enrolled_store
workers = runner.workers


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
