"""`facewatch bench scale`: real `facewatch run` replicas on the session's real broker, and the figures' arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker.bench.scale import Sample, cpu_in_window, rebalance_pause, throughput
from worker.errors import FacewatchError

FIELDS = {"bench", "replicas", "frames_per_s", "duplicates", "rebalance_pause_s", "lag_over_time", "ratio"}


def test_scale_bench_runs_one_then_two_replicas_on_the_real_broker(kafka_broker, shared_dir):
    clip = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    argv = [sys.executable, "-m", "worker", "bench", "scale", "--bootstrap", kafka_broker.bootstrap]
    argv += ["--video", str(clip), "--replicas", "1,2", "--frames", "12", "--cameras", "2", "--settle", "0", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["replicas"] for row in rows] == [1, 2]
    for row in rows:
        assert row.keys() >= FIELDS and row["bench"] == "scale"
        assert row["partitions"] == 2 and row["frames"] == 24
        assert row["frames_per_s"] > 0
        # Every frame went through exactly one replica's pipeline: a rebalance replayed nothing twice.
        assert sum(row["per_replica_frames"]) == 24, row
        assert row["events"] > 0 and row["duplicates"] == 0, row
        assert len(row["per_replica_frames"]) == row["replicas"]
    assert rows[0]["rebalance_pause_s"] is None and rows[0]["ratio"] == 1.0


def _samples(*rows: tuple[float, list[float], list[float | None]]) -> list[Sample]:
    # Each replica uses half a core from t = 1 s on.
    return [Sample(t, decoded, lag, None, [max(0.0, t - 1) / 2] * len(decoded)) for t, decoded, lag in rows]


def test_throughput_counts_only_while_every_replica_has_frames():
    samples = _samples(
        (0.0, [0, 0], [None, None]),
        (1.0, [10, 0], [90, None]),  # the second replica has not joined yet: not counted
        (2.0, [12, 1], [40, 40]),
        (3.0, [22, 11], [30, 30]),  # settle_s 1 after both took frames: the window opens here
        (5.0, [42, 31], [10, 10]),
        (6.0, [50, 33], [0, 8]),  # the first replica ran dry: the window closes here
        (9.0, [50, 45], [0, 0]),
    )
    frames_per_s, window = throughput(samples, replicas=2, settle_s=1.0)
    assert window == 3.0 and frames_per_s == pytest.approx((83 - 33) / 3.0)
    cores, frames_per_cpu_s = cpu_in_window(samples, replicas=2, settle_s=1.0)
    assert cores == pytest.approx(1.0) and frames_per_cpu_s == pytest.approx((83 - 33) / 3.0)


def test_rebalance_pause_is_the_longest_stretch_without_a_frame_until_the_new_replica_takes_one():
    samples = _samples(
        (0.0, [5, 0], [9, None]),
        (1.0, [10, 0], [9, None]),  # joined here
        (2.0, [12, 0], [9, None]),
        (3.0, [12, 0], [9, None]),  # revoked: nothing moves
        (4.5, [12, 0], [9, None]),
        (5.0, [13, 2], [9, 9]),  # both take frames again
        (6.0, [20, 9], [9, 9]),
    )
    assert rebalance_pause(samples, joined_at=1.0) == 3.0
    assert rebalance_pause(samples[:5], joined_at=1.0) is None  # the new replica never took a frame


def test_partitions_must_cover_the_replicas(tmp_path):
    from worker.bench.scale import run_scale_bench

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(FacewatchError, match="leave replicas idle"):
        run_scale_bench("127.0.0.1:1", video, [1, 2], partitions=1)
