"""Smoke tests proving the real test components work: broker, RTSP server, Prometheus, video writer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from tests.infra._process import ComponentError, free_port
from tests.infra.kafka_broker import FAST_GROUP_SETTINGS, KafkaBroker
from tests.infra.media import color_bars, write_h264_mp4
from tests.infra.prometheus_server import PrometheusServer, find_promtool
from tests.infra.rtsp_server import RtspServer

# ---------------------------------------------------------------- helpers


def read_rtsp_frames(url: str, count: int, timeout: float = 15.0, pts: list[int] | None = None) -> list[np.ndarray]:
    """Decode ``count`` RGB frames from an RTSP URL with PyAV (TCP); stop after ``timeout`` s.

    When ``pts`` is given, the frames' presentation timestamps are appended to it.
    """
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    # timeout=(open, read): a stalled server fails in seconds instead of blocking the test.
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5.0, 3.0)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if pts is not None and frame.pts is not None:
                pts.append(frame.pts)
            if len(frames) >= count or time.monotonic() > deadline:
                break
    return frames


@pytest.fixture(scope="module")
def bars_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 s, 25 fps, 320x240 H.264 MP4 of colour bars: short, so a 40-frame read proves looping."""
    path = tmp_path_factory.mktemp("video") / "bars.mp4"
    write_h264_mp4(path, color_bars(25, width=320, height=240), fps=25)
    return path


# ---------------------------------------------------------------- video writer


def test_write_h264_mp4_round_trip(tmp_path: Path) -> None:
    frames = list(color_bars(12, width=64, height=48))
    path = tmp_path / "small.mp4"
    assert write_h264_mp4(path, frames, fps=12) == 12
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (64, 48)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12
    # Lossy, but the bars survive: compare with the source well away from the moving square.
    error = np.abs(decoded[5][:8].astype(int) - frames[5][:8].astype(int)).mean()
    assert error < 12, error


def test_write_h264_mp4_rejects_odd_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_h264_mp4(tmp_path / "odd.mp4", [np.zeros((47, 64, 3), np.uint8)], fps=10)


# ---------------------------------------------------------------- Kafka-compatible broker (Tansu)


def test_kafka_produce_consume_keys_headers_and_group_resume(kafka_broker: KafkaBroker) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic, group = "infra-smoke", "infra-smoke-group"
    kafka_broker.create_topic(topic, partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=0)

    def produce(start: int, stop: int) -> None:
        for i in range(start, stop):
            key = f"cam-{i % 3}".encode()
            producer.send(topic, key=key, value=f"frame-{i}".encode(), headers=[("seq", str(i).encode())])
        producer.flush(timeout=10)

    def consume(expected: int) -> list:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=group,
            # "earliest": Tansu's ListOffsets(LATEST) is wrong, so "latest" would re-deliver.
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **FAST_GROUP_SETTINGS,
        )
        records: list = []
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # Give a late duplicate a chance to show up before committing.
        for batch in consumer.poll(timeout_ms=300).values():
            records.extend(batch)
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in range(3)}
        consumer.close()
        return [records, committed]

    produce(0, 9)
    first, committed = consume(9)
    assert sorted(r.value for r in first) == sorted(f"frame-{i}".encode() for i in range(9))
    for record in first:
        seq = int(dict(record.headers)["seq"])
        assert record.value == f"frame-{seq}".encode()
        assert record.key == f"cam-{seq % 3}".encode()
    # Same key, same partition: per-camera order is what the worker relies on.
    partitions_by_key: dict[bytes, set[int]] = {}
    for record in first:
        partitions_by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(parts) == 1 for parts in partitions_by_key.values()), partitions_by_key
    assert sum(v for v in committed.values() if v is not None) == 9, committed

    # A new consumer in the same group resumes at the committed offsets: only the new records.
    produce(9, 12)
    second, _ = consume(3)
    assert sorted(r.value for r in second) == [b"frame-10", b"frame-11", b"frame-9"]
    producer.close()


def test_kafka_broker_restart_on_same_port(kafka_broker_factory: Callable[..., KafkaBroker]) -> None:
    broker = kafka_broker_factory()
    broker.create_topic("before-restart", partitions=1)
    port = broker.port
    broker.restart(hard=True)
    assert broker.port == port and broker.running
    with broker.admin() as admin:
        # Memory storage: a restarted Tansu starts empty (Apache Kafka would keep the topic).
        assert "before-restart" not in admin.list_topics()
    broker.create_topic("after-restart", partitions=2)


def test_kafka_broker_refuses_taken_port(kafka_broker: KafkaBroker) -> None:
    # The shared broker holds this port: a second broker must fail fast and say why.
    clash = KafkaBroker(port=kafka_broker.port, start_timeout=5)
    try:
        with pytest.raises(ComponentError, match="already in use"):
            clash.start()
    finally:
        clash.close()


def test_component_failure_shows_process_log() -> None:
    from tests.infra._process import ManagedProcess, wait_until

    # A process that dies before it is ready: the error carries its exit code and its stderr.
    proc = ManagedProcess("doomed", ["/bin/sh", "-c", "echo 'bind: permission denied' >&2; exit 7"])
    proc.start()
    try:
        with pytest.raises(ComponentError, match=r"(?s)exited with code 7.*permission denied"):
            wait_until(lambda: False, 5, "never ready", alive=proc.check_alive)
    finally:
        proc.cleanup()


# ---------------------------------------------------------------- RTSP server (GStreamer)


def test_rtsp_loops_and_survives_restart_on_same_port(
    rtsp_server_factory: Callable[..., RtspServer], bars_video: Path
) -> None:
    server = rtsp_server_factory(bars_video)
    assert server.url == f"rtsp://127.0.0.1:{server.port}/cam"
    assert "H264" in server.describe()

    # 40 frames from a 25-frame file: the stream loops instead of ending...
    pts: list[int] = []
    frames = read_rtsp_frames(server.url, 40, pts=pts)
    assert len(frames) == 40
    # ...with timestamps that keep rising one frame (90 kHz / 25 fps) at a time across the loop.
    steps = set(np.diff(pts).tolist())
    assert steps == {3600}, steps
    assert frames[0].shape == (240, 320, 3)
    # Leftmost bar is white, rightmost blue: real picture content came through.
    assert frames[30][120, 5].min() > 200
    assert frames[30][120, -5][2] > 200 and frames[30][120, -5][:2].max() < 60

    # A client that is reading when the server dies sees the stream end (error or EOF), quickly.
    port = server.port
    with av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=(5.0, 3.0)) as container:
        decoder = container.decode(video=0)
        next(decoder)
        server.kill()
        t0 = time.monotonic()
        with pytest.raises((av.error.FFmpegError, StopIteration, OSError)):
            for _ in range(1000):
                next(decoder)
        assert time.monotonic() - t0 < 10

    # While it is down, connecting fails.
    with pytest.raises((av.error.FFmpegError, OSError)):
        read_rtsp_frames(server.url, 1, timeout=5)

    # Back on the same port and URL, a fresh connection reads again.
    server.start()
    assert server.port == port
    assert len(read_rtsp_frames(server.url, 10)) == 10


def test_rtsp_serves_real_video(rtsp_server_factory: Callable[..., RtspServer], shared_dir: Path) -> None:
    video = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    server = rtsp_server_factory(video, mount="/hamilton")
    frames = read_rtsp_frames(server.url, 15)
    assert len(frames) == 15
    assert frames[0].shape == (360, 640, 3)
    assert frames[-1].std() > 10  # a real picture, not a blank frame


def test_rtsp_bad_file_fails_with_reason(rtsp_server_factory: Callable[..., RtspServer], tmp_path: Path) -> None:
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"this is not an mp4 file")
    # The server runs but cannot prepare the media: start() gives up with the DESCRIBE error.
    with pytest.raises(ComponentError, match="DESCRIBE"):
        rtsp_server_factory(bad, start_timeout=3)


# ---------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_client_endpoint_and_evaluates_rules(
    prometheus_server_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    frames = Counter("facewatch_infra_frames", "Frames seen by the smoke test", ["camera"], registry=registry)
    frames.labels(camera="cam-1").inc(3)
    port = free_port()
    http_server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: smoke\n"
        "    rules:\n"
        "      - record: camera:facewatch_infra_frames:doubled\n"
        "        expr: facewatch_infra_frames_total * 2\n"
    )
    promtool = find_promtool()
    if promtool:
        check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    try:
        prom = prometheus_server_factory([f"127.0.0.1:{port}"], [rules])
        result = prom.wait_for('facewatch_infra_frames_total{camera="cam-1"}', timeout=30)
        assert float(result[0]["value"][1]) == 3
        assert result[0]["metric"]["job"] == "test"

        # Later scrapes see the change, and the recording rule follows it.
        frames.labels(camera="cam-1").inc(2)
        prom.wait_for(
            "camera:facewatch_infra_frames:doubled",
            timeout=15,
            predicate=lambda r: bool(r) and float(r[0]["value"][1]) == 10,
        )
        assert prom.query_value('up{job="test"}') == 1
    finally:
        http_server.shutdown()
        thread.join(timeout=5)
