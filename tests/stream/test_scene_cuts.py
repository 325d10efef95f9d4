"""A track is one person: the worker, as a real process on the real Hamilton clip, ends its tracks at the scene cuts.

The clip has three cuts, found by eye and by the shot-change signal alike (docs/accuracy.md, "Tracks
and scene cuts"): frame 20 (Lin-Manuel Miranda on stage -> a close-up from behind Alex Lacamoire),
82 (-> Miranda singing), 211 (-> the audience: Barack Obama, Michelle Obama). Before tracks ended
at cuts, Miranda's track began on Lacamoire, was recognised as Miranda, then stood on Obama's face
until the end of the clip, still labelled Miranda.
"""

from __future__ import annotations

import bisect
from datetime import datetime
from pathlib import Path

import av
import pytest

from tests.infra.worker_process import WorkerProcess
from tests.stream.test_runner import (  # noqa: F401 - fixtures
    MIRANDA,
    _assert_consistent,
    _config,
    clip,
    enrolled_store,
    workers,
)

CUTS = (20, 82, 211)  # the first frame of each new shot


def _frame_times(path: Path) -> list[float]:
    """Presentation time of each frame, seconds (the file source stamps frames with its start time plus these)."""
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.shared
def test_no_track_of_the_worker_outlives_a_scene_cut(enrolled_store, clip, tmp_path, workers):  # noqa: F811
    camera = {"id": "hamilton", "url": str(clip), "realtime": False}
    worker = WorkerProcess(tmp_path, _config(enrolled_store, tmp_path, cameras=[camera])).start()
    workers.append(worker)
    assert worker.wait_exit(600) == 0, worker.log_tail()
    events = worker.events()
    _assert_consistent(events)
    ended = [e for e in events if e["type"] == "track_ended"]
    matches = [e for e in events if e["type"] == "face_match"]

    # Frame times on the worker's clock: the first frame's is the earliest birth (two faces are in view at once).
    times = _frame_times(clip)
    start = min(_at(e["started_at"]) for e in ended) - times[0]
    assert sum(1 for e in ended if abs(_at(e["started_at"]) - start - times[0]) < 1e-3) >= 2
    boundaries = [(times[cut - 1] + times[cut]) / 2 for cut in CUTS]

    def shot(stamp: str) -> int:
        return bisect.bisect(boundaries, _at(stamp) - start)

    # Miranda is recognised in his own shot, and his track ends at the cut to the audience.
    assert {e["identity_name"] for e in matches} == {MIRANDA}
    for match in matches:
        assert shot(match["frame_timestamp"]) == 2
        (end,) = [e for e in ended if e["track_id"] == match["track_id"]]
        assert end["identity_name"] == MIRANDA and end["reason"] == "scene_cut" and shot(end["ended_at"]) == 2
    identities: dict[str, set[str]] = {}
    for event in events:
        if event.get("identity_id"):
            identities.setdefault(event["track_id"], set()).add(event["identity_id"])
    assert all(len(who) == 1 for who in identities.values()), identities
    for event in ended:
        assert shot(event["started_at"]) == shot(event["ended_at"]), f"track spans a scene cut: {event}"
    # Each cut ended the tracks open before it; a track was last seen at most detect_every frames earlier.
    cut_ends = [_at(e["ended_at"]) - start for e in ended if e["reason"] == "scene_cut"]
    assert {shot(e["ended_at"]) for e in ended if e["reason"] == "scene_cut"} == {0, 1, 2}
    assert all(any(times[cut - 3] - 1e-3 <= at <= times[cut - 1] + 1e-3 for cut in CUTS) for at in cut_ends)
