"""`facewatch bench pipeline` on the first frames of the real clip: both sides, the JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker.bench.pipeline import enrolled_names
from worker.errors import FacewatchError

KEYS = {"bench", "impl", "fps", "faces_per_s", "matched_frames", "latency_p50_ms", "latency_p95_ms"}


def test_pipeline_bench_rows_for_both_sides(shared_dir, tmp_path):
    stills = shared_dir / "data" / "stills"
    argv = [sys.executable, "-m", "worker", "bench", "pipeline", str(shared_dir / "data/video/short_hamilton_clip.mp4")]
    argv += ["--enroll", str(stills / "lin-manuel-miranda.png"), str(stills / "biden.jpg"), "--frames", "120", "--json"]
    argv += ["--distractors", str(shared_dir / "data/lfw/images"), "--distractor-count", "20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["impl"] for row in rows] == ["facewatch", "face_recognition"]
    for row in rows:
        assert row.keys() >= KEYS and row["bench"] == "pipeline" and row["frames"] == 120
        assert row["fps"] > 0 and set(row["matched_frames"]) == {"lin-manuel-miranda", "biden"}
        assert row["matched_frames"]["biden"] == 0  # not in the clip
        assert row["false_alarms"] == 0  # nor is any of the 20 LFW people enrolled beside them
    # Miranda sings alone, close up, from frame 84 on: both sides find him.
    assert all(row["matched_frames"]["lin-manuel-miranda"] > 0 for row in rows)
    assert set(rows[0]["stage_ms_per_frame"]) >= {"detect", "embed"}
    assert set(rows[1]["stage_ms_per_frame"]) == {"decode", "detect", "landmarks+embed", "compare"}


def test_enrollment_photos_are_checked(tmp_path):
    with pytest.raises(FacewatchError, match="does not exist"):
        enrolled_names([tmp_path / "nobody.jpg"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "same.jpg").write_bytes(b"x")
    with pytest.raises(FacewatchError, match="two enrollment photos"):
        enrolled_names([tmp_path / "a/same.jpg", tmp_path / "b/same.jpg"])
