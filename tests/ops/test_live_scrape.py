"""A real Prometheus scraping a real `facewatch run`: every metric the dashboard and the alert rules use exists.

The worker reads a looping video file (a face that comes and goes, so tracks open and end) and the
Kafka frames topic (valid frames plus one that is not a JPEG, so the dead-letter path runs).
Prometheus must know every metric family the dashboard and rules name (from the scrape's metadata,
which includes labelled families with no series yet), and hold samples for every series, except the
few that only appear on events this scenario cannot cause (listed below with the reason).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.infra._process import free_port
from tests.infra.kafka_broker import KafkaBroker
from tests.infra.media import write_h264_mp4
from tests.ops.opsfiles import (
    PROMETHEUS_SYNTHETIC,
    ROOT,
    dashboard_exprs,
    exported_series_names,
    load_dashboard,
    raw_metric_names,
    rule_exprs,
)

# Series that need an event this test cannot cause; their families must still be exported.
EVENT_ONLY = {
    "facewatch_matches_total": "needs an enrolled identity that matches",
    "facewatch_rtsp_reconnects_total": "RTSP cameras only, after a failure",
    "facewatch_camera_connected": "RTSP cameras only",
    "facewatch_event_publish_errors_total": "needs a sink that fails",
    "facewatch_visitors_deleted_total": "needs visitors.retention_hours to pass, or a forget",
    "facewatch_frames_published_total": "facewatch publish only (tests/stream/test_publish_http.py)",
}
READY_TIMEOUT_S = 240.0
SERIES_TIMEOUT_S = 120.0


def face_video(path: Path, fps: int = 8) -> Path:
    """A looping clip: a portrait for 1 s, then 1.5 s of grey, so each pass opens and ends a track."""
    from worker.samples import sample_paths

    portrait = Image.open(sample_paths()["Eileen Collins"]).convert("RGB").resize((320, 320))
    face = np.asarray(portrait, dtype=np.uint8)
    grey = np.full_like(face, 128)
    write_h264_mp4(path, [face] * fps + [grey] * (fps * 3 // 2), fps=fps)
    return path


def produce_frames(broker: KafkaBroker, topic: str, image: np.ndarray, count: int) -> None:
    """``count`` valid frame messages of camera ``cam-kafka`` and one message that is not a JPEG."""
    from kafka import KafkaProducer

    from worker.stream.frames import encode_frame_message

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        for seq in range(count):
            key, value, headers = encode_frame_message("cam-kafka", seq, time.time(), image)
            producer.send(topic, key=key, value=value, headers=headers)
        _, _, headers = encode_frame_message("cam-kafka", count, time.time(), image)
        producer.send(topic, key=b"cam-kafka", value=b"this is not a jpeg", headers=headers)
        producer.flush(30)
    finally:
        producer.close()


def wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"facewatch run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    pytest.fail(f"/readyz not OK after {READY_TIMEOUT_S:.0f} s: {last}\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_prometheus_scrapes_every_metric_the_dashboard_and_rules_use(
    tmp_path: Path, kafka_broker: KafkaBroker, prometheus_server_factory
) -> None:
    video = face_video(tmp_path / "face.mp4")
    topic = f"frames-live-scrape-{os.getpid()}-{time.time_ns()}"
    kafka_broker.create_topic(topic, partitions=2)
    first_frame = np.asarray(Image.open(sample_paths_portrait()).convert("RGB").resize((320, 320)), dtype=np.uint8)
    produce_frames(kafka_broker, topic, first_frame, count=5)

    port = free_port()
    config = {
        "cameras": [{"id": "cam-file", "url": str(video), "loop": True, "realtime": True}],
        "watchlist": {"store": str(tmp_path / "watchlist.db")},
        "kafka": {"bootstrap_servers": kafka_broker.bootstrap},
        "frames": {
            "enabled": True,
            "topic": topic,
            "group_id": f"{topic}-group",
            "dead_letter_topic": f"{topic}-dead",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
        },
        "events": {"stdout": True},
        "tracking": {"max_age_s": 0.5},
        # The looping face is an unknown visitor who keeps coming back: every visitor series shows.
        "visitors": {"enabled": True, "store": str(tmp_path / "visitors.db"), "visit_gap_s": 1.0},
        "http": {"host": "127.0.0.1", "port": port},
        "shutdown": {"drain_timeout_s": 10},
    }
    config_path = tmp_path / "worker.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWATCH_")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "--log-level", "INFO", "--config", str(config_path), "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,  # events (JSON lines): not needed here
            stderr=log_file,
        )
    try:
        wait_ready(process, port, log)
        prometheus = prometheus_server_factory(scrape_targets=[f"127.0.0.1:{port}"])
        prometheus.wait_for('up{job="test"} == 1', timeout=30)

        used = raw_metric_names(dashboard_exprs(load_dashboard()) + rule_exprs())
        series_to_family = exported_series_names()
        assert used - set(series_to_family) - PROMETHEUS_SYNTHETIC == set()

        # 1. Every family is exported by the running worker (metadata covers families with no series yet).
        # In the classic text format metadata is keyed by x_total / x_info, in OpenMetrics by the family.
        metadata = prometheus.api("targets/metadata", {"match_target": '{job="test"}'})
        families = {entry["metric"] for entry in metadata}
        for name in sorted(used - PROMETHEUS_SYNTHETIC):
            family = series_to_family[name]
            assert name in families or family in families, f"{family} not in the scraped metadata: {sorted(families)}"

        # 2. Every series exists once frames, tracks and the dead letter have gone through.
        expected = used - set(EVENT_ONLY)
        present: set[str] = set()
        deadline = time.monotonic() + SERIES_TIMEOUT_S
        while time.monotonic() < deadline:
            result = prometheus.query('count by (__name__) ({job="test"})')
            present = {sample["metric"]["__name__"] for sample in result}
            if expected <= present:
                break
            if process.poll() is not None:
                pytest.fail(f"facewatch run exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)
        missing = sorted(expected - present)
        assert not missing, f"no samples for {missing}; worker log:\n{log.read_text()[-3000:]}"

        # The scenario really ran: frames from both sources, a track ended, the bad frame dead-lettered.
        decoded = prometheus.query('sum by (camera) (facewatch_frames_decoded_total{job="test"})')
        assert {s["metric"]["camera"] for s in decoded} >= {"cam-file", "cam-kafka"}
        assert prometheus.query_value('sum(facewatch_dead_letter_messages_total{job="test"})') == 1.0
        ended = prometheus.query_value('sum(facewatch_tracks_ended_total{job="test", outcome="unknown"})')
        assert ended is not None and ended >= 1
        device = prometheus.query('facewatch_device_info{job="test"}')
        assert device and device[0]["metric"]["device"].startswith("cpu"), json.dumps(device)
        # embedder.precision auto lowers the search only without visitors, who cluster every descriptor
        assert device[0]["metric"]["precision"] == "fp32", json.dumps(device)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"worker did not drain cleanly:\n{log.read_text()[-3000:]}"


def sample_paths_portrait() -> Path:
    from worker.samples import sample_paths

    return sample_paths()["Eileen Collins"]
