"""`facewatch demo`, README's first command: Hopper matched, both people's tracks ended, Collins unknown."""

from __future__ import annotations

import subprocess
import sys

from worker.stream.events import FaceMatch, TrackEnded, parse_event


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
