"""`facewatch demo`, README's first command: Hopper matched, both people's tracks ended, Collins unknown;
the real events it prints are valid against the committed schema file."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema

from worker.stream.events import (
    SCHEMA_PATH,
    FaceMatch,
    TrackEnded,
    TrackStarted,
    VisitEnded,
    VisitStarted,
    parse_event,
)


def _validate(lines: list[str]) -> None:
    """Every printed event is valid against the committed schema file (what a strict consumer checks)."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    for line in lines:
        validator.validate(json.loads(line))


def test_demo_prints_a_match_for_hopper_and_an_unknown_for_collins(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    _validate(done.stdout.splitlines())
    events = [parse_event(line) for line in done.stdout.splitlines()]
    matches = [e for e in events if isinstance(e, FaceMatch)]
    ended = [e for e in events if isinstance(e, TrackEnded)]
    started = [e for e in events if isinstance(e, TrackStarted)]
    assert [m.identity_name for m in matches] == ["Grace Hopper"]
    assert sorted((e.outcome, e.identity_name or "") for e in ended) == [("matched", "Grace Hopper"), ("unknown", "")]
    assert all(e.faces_voted >= 1 for e in ended)
    # Collins is a stranger: no similarity to anyone enrolled (it used to say best_score 0.88).
    assert next(e.best_score for e in ended if e.outcome == "unknown") is None
    # Each track is announced at birth, before anything else about it, with the frame its box is in.
    assert sorted(e.track_id for e in started) == sorted(e.track_id for e in ended)
    assert all(events.index(s) < events.index(m) for s in started for m in matches if m.track_id == s.track_id)
    assert all(e.frame_width > 0 and e.frame_height > 0 for e in [*started, *matches])
    assert "Eileen Collins is not enrolled" in done.stderr
    assert list(tmp_path.iterdir()) == []  # the demo cleans up after itself


def test_demo_with_visitors_counts_collins_twice_as_one_returning_visitor(tmp_path):
    """The worker end to end: a real video, real faces, the visitor stage, its events and its store."""
    keep = tmp_path / "kept"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--visitors", "--fast", "--keep", str(keep)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    _validate(done.stdout.splitlines())
    events = [parse_event(line) for line in done.stdout.splitlines()]
    visits = [e for e in events if isinstance(e, VisitStarted | VisitEnded)]
    assert [(e.type, e.returning) for e in visits] == [
        ("visit_started", False),
        ("visit_ended", False),
        ("visit_started", True),
        ("visit_ended", True),
    ]
    assert len({e.visitor_id for e in visits}) == 1 and len({e.visit_id for e in visits}) == 2
    assert [e.reason for e in visits if isinstance(e, VisitEnded)] == ["gap", "shutdown"]
    # Hopper is on the watchlist: her track never becomes a visitor.
    unknown = [e for e in events if isinstance(e, TrackEnded) and e.identity_id is None]
    assert len(unknown) == 2
    listed = subprocess.run(
        [sys.executable, "-m", "worker", "visitors", "--store", str(keep / "visitors.db"), "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [(json.loads(line)["tracks"], json.loads(line)["visits"]) for line in listed] == [(2, 2)]
