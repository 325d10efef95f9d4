"""The event models, their committed schema file, and the deterministic event ids."""

from __future__ import annotations

import json
import subprocess
import sys

import pydantic
import pytest

from worker.stream.events import SCHEMA_PATH, FaceMatch, TrackEnded, event_id, parse_event, schema_text, timestamp


def _match(**overrides: object) -> FaceMatch:
    fields: dict = dict(
        event_id=event_id("cam", "1000-0", "id-1"),
        camera_id="cam",
        track_id="1000-0",
        model_version="m",
        watchlist_version=3,
        identity_id="id-1",
        identity_name="Ada",
        score=0.8,
        distance=0.4,
        confidence=0.99,
        threshold=0.5,
        faces=3,
        box=[1, 2, 30, 40],
        first_seen=timestamp(1.0),
        last_seen=timestamp(2.0),
        frame_timestamp=timestamp(2.0),
        frame_width=640,
        frame_height=480,
        frame_seq=50,
    )
    fields.update(overrides)
    return FaceMatch(**fields)


def test_schema_file_is_what_the_models_generate():
    assert SCHEMA_PATH.read_text() == schema_text(), "regenerate: facewatch events schema > " + str(SCHEMA_PATH)


def test_cli_prints_the_schema_file():
    out = subprocess.run(
        [sys.executable, "-m", "worker", "events", "schema"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == json.loads(SCHEMA_PATH.read_text())


def test_event_ids_are_deterministic_and_distinct():
    assert event_id("cam", "1000-0", "id-1") == event_id("cam", "1000-0", "id-1")
    others = {event_id("cam", "1000-0", "id-2"), event_id("cam", "1000-1", "id-1"), event_id("cam2", "1000-0", "id-1")}
    assert event_id("cam", "1000-0", "id-1") not in others and len(others) == 3
    # The separator keeps ("a", "bc") and ("ab", "c") apart.
    assert event_id("a", "bc", "x") != event_id("ab", "c", "x")


def test_round_trip_and_no_pixels_by_default():
    match = _match()
    data = match.model_dump_json()
    assert parse_event(data) == match
    assert json.loads(data)["thumbnail_jpeg_base64"] is None
    ended = TrackEnded(
        event_id=event_id("cam", "1000-0", "ended"),
        camera_id="cam",
        track_id="1000-0",
        model_version="m",
        watchlist_version=3,
        outcome="unknown",
        identity_id=None,
        identity_name=None,
        best_score=None,
        faces=0,
        started_at=timestamp(1.0),
        ended_at=timestamp(1.5),
        duration_s=0.5,
        reason="lost",
    )
    assert parse_event(ended.model_dump_json()) == ended


@pytest.mark.parametrize(
    "overrides",
    [{"score": 1.5}, {"box": [1, 2, 3]}, {"faces": 0}, {"distance": -0.1}, {"unexpected": 1}],
)
def test_invalid_events_are_rejected(overrides):
    with pytest.raises(pydantic.ValidationError):
        _match(**overrides)


def test_parse_rejects_unknown_type():
    data = json.loads(_match().model_dump_json())
    data["type"] = "face_seen"
    with pytest.raises(pydantic.ValidationError):
        parse_event(json.dumps(data))
