"""`facewatch bench kafka`: the frames consumer's cost on the session's real broker, beside the models'."""

from __future__ import annotations

import json
import subprocess
import sys

FIELDS = {"bench", "impl", "size", "frames", "frames_per_s", "mb_per_s", "cpu_ms_per_frame", "cpu_share"}


def test_kafka_bench_rows_for_the_client_the_frame_source_the_decode_and_the_models(kafka_broker, shared_dir):
    clip = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    argv = [sys.executable, "-m", "worker", "bench", "kafka", "--bootstrap", kafka_broker.bootstrap, "--video"]
    argv += [str(clip), "--frames", "24", "--size", "640x360", "--rounds", "2", "--models", "3", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = {row["impl"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert list(rows) == ["kafka-python", "frame-source", "jpeg-decode", "models"]
    for impl in ("kafka-python", "frame-source", "jpeg-decode"):
        row = rows[impl]
        assert row.keys() >= FIELDS and row["bench"] == "kafka" and row["size"] == "640x360"
        assert row["frames"] == 24 and len(row["rounds"]) == 2
        assert row["frames_per_s"] > 0 and row["mb_per_s"] > 0 and row["cpu_ms_per_frame"] > 0
    models = rows["models"]
    assert models["frames"] == 3 and models["frames_per_s"] > 0
    assert {"detect", "embed"} <= set(models["stage_ms_per_frame"])


def test_kafka_bench_refuses_a_bad_size():
    argv = [sys.executable, "-m", "worker", "bench", "kafka", "--bootstrap", "127.0.0.1:1", "--size", "720p"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--size expects WxH" in done.stderr
