"""`facewatch demo`, README's first command: Hopper matched, both people's tracks ended, Collins unknown."""

from __future__ import annotations

import json
import subprocess
import sys

from worker.stream.events import FaceMatch, TrackEnded, VisitEnded, VisitStarted, parse_event


def test_demo_prints_a_match_for_hopper_and_an_unknown_for_collins(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    events = [parse_event(line) for line in done.stdout.splitlines()]
    matches = [e for e in events if isinstance(e, FaceMatch)]
    ended = [e for e in events if isinstance(e, TrackEnded)]
    assert [m.identity_name for m in matches] == ["Grace Hopper"]
    assert sorted(e.identity_name or "unknown" for e in ended) == ["Grace Hopper", "unknown"]
    assert all(e.faces_voted >= 1 for e in ended)
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
