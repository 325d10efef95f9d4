"""`facewatch bench streams`: a tiny real run (the clip, live file cameras, the worker's pipeline), and the knee."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker.bench.streams import StepResult, clip_at, knee, parse_size
from worker.errors import FacewatchError
from worker.stream.sources.video import FileSource

KEYS = {"bench", "size", "fps", "streams", "p95_ms", "dropped", "cpu_percent", "stage_ms_per_frame", "mean_batch"}


def test_streams_bench_rows_hold_plausible_figures(shared_dir: Path) -> None:
    argv = [sys.executable, "-m", "worker", "bench", "streams", str(shared_dir / "data/video/short_hamilton_clip.mp4")]
    argv += ["--sizes", "360p", "--steps", "1,2", "--seconds", "4", "--warmup", "2", "--all-steps", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["streams"] for row in rows] == [1, 2]
    for row in rows:
        assert row.keys() >= KEYS and row["bench"] == "streams"
        assert row["size"] == "640x360" and row["fps"] == 10
        # Frames captured in the window were either decided or dropped: about streams x fps x seconds of them.
        expected = row["streams"] * 10 * row["seconds"]
        assert 0.5 * expected <= row["frames"] + row["dropped"] <= expected + 2 * row["streams"]
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
        assert 0 < row["cpu_percent"] <= 100
        assert row["stage_ms_per_frame"]["detect"] > 0 and row["stage_ms_per_frame"]["track"] > 0
        # The clip always shows faces: some were embedded, in batches of at least one.
        assert row["batches"] > 0 and row["mean_batch"] >= 1
        assert row["ok"] == (row["dropped"] == 0 and row["p95_ms"] < 250)


def test_the_played_clip_is_resized_and_resampled(shared_dir: Path, tmp_path: Path) -> None:
    clip = clip_at(shared_dir / "data/video/short_hamilton_clip.mp4", tmp_path, (1280, 720), 10)
    frames: list = []
    source = FileSource("cam", clip)
    source.start(frames.append)
    assert source.finished.wait(120)
    # 9.18 s at 29.97 fps -> one frame every 0.1 s: 92 frames of 1280x720.
    assert len(frames) == 92 and frames[0].image.shape == (720, 1280, 3)
    steps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)]
    assert min(steps) == pytest.approx(0.1, abs=1e-3) and max(steps) == pytest.approx(0.1, abs=1e-3)


def _row(streams: int, p95: float | None, dropped: int = 0) -> dict:
    latencies = [] if p95 is None else [p95 / 1000.0]
    result = StepResult((640, 360), 10, streams, 10.0, latencies, len(latencies), dropped, {}, 0, 0, 1.0, 2)
    return result.row()


def test_a_step_keeps_up_only_under_the_budget_with_nothing_dropped() -> None:
    assert _row(1, 249.9)["ok"] and not _row(1, 250.0)["ok"]
    assert not _row(1, 10.0, dropped=1)["ok"]
    assert not _row(1, None)["ok"]  # no frame decided at all
    assert _row(4, 100.0)["cpu_percent"] == 5.0  # 1 CPU second over 10 s on 2 cores


def test_the_knee_is_the_largest_step_before_the_first_failure() -> None:
    rows = [_row(1, 50), _row(2, 80), _row(4, 120), _row(6, 300), _row(8, 200)]
    assert knee(rows) == 4  # 8 passing after 6 failed is noise, not capacity
    assert knee([_row(1, 500)]) is None
    assert knee([_row(1, 50), _row(2, 60, dropped=3)]) == 1
    assert knee([]) is None


def test_sizes_are_named_or_given() -> None:
    assert parse_size("360p") == (640, 360) and parse_size("720p") == (1280, 720)
    assert parse_size("320x240") == (320, 240)
    for bad in ("big", "321x240", "0x0", "640x"):
        with pytest.raises(FacewatchError, match="use 360p"):
            parse_size(bad)
