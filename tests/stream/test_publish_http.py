"""`facewatch publish` serves /metrics, /healthz and /readyz (issue 9, item 7): a real process reading a real RTSP
server into a real broker; the camera and then the broker go away and come back.

Regression: before, the ingest role served nothing, so a camera or broker down behind it raised no alert.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra._process import free_port, wait_until
from tests.infra.media import color_bars, write_h264_mp4

CAMERA = "door-1"


@pytest.fixture
def bars(tmp_path: Path) -> Path:
    path = tmp_path / "bars.mp4"
    write_h264_mp4(path, color_bars(50, width=320, height=240), fps=25)
    return path


class PublishProcess:
    """`facewatch publish` as a process of its own, with its HTTP endpoints on a free port."""

    def __init__(self, source: str, topic: str, bootstrap: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWATCH_")}
        env.update(FACEWATCH_KAFKA__RETRY_BACKOFF_MAX_S="1", FACEWATCH_RTSP__MAX_BACKOFF_S="1",
                   FACEWATCH_PUBLISH__BROKER_TIMEOUT_S="3", FACEWATCH_PUBLISH__GIVE_UP_AFTER_S="300")  # fmt: skip
        argv = [sys.executable, "-m", "worker", "publish", source, "--camera", CAMERA, "--topic", topic,
                "--bootstrap", bootstrap, "--http-port", str(self.port)]  # fmt: skip
        env["FACEWATCH_HTTP__HOST"] = "127.0.0.1"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
            )

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"publish exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith("#") or line.split("{")[0].split(" ")[0] not in (name, name + "_total"):
                continue
            series, value = line.rsplit(" ", 1)
            if not labels or all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def wait_for(self, check, what: str, timeout: float = 60.0) -> None:
        try:
            wait_until(check, timeout, what, 0.2, alive=self._alive)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; /readyz: {self.http('/readyz')}\n{self.log.read_text()[-4000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def publishers() -> Iterator[list[PublishProcess]]:
    started: list[PublishProcess] = []
    yield started
    for publisher in started:
        publisher.close()


def test_publish_probes_and_metrics_follow_the_camera_and_the_broker(
    rtsp_server_factory, kafka_broker_factory, bars, tmp_path, publishers
):
    camera = rtsp_server_factory(bars)
    broker = kafka_broker_factory()
    topic = f"frames-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    publisher = PublishProcess(camera.url, topic, broker.bootstrap, tmp_path / "publish.log")
    publishers.append(publisher)

    # Alive from the start; ready once the camera is connected and the broker acknowledges frames.
    publisher.wait_for(lambda: publisher.http("/healthz")[0] == 200, "/healthz 200")
    publisher.wait_for(lambda: publisher.http("/readyz")[0] == 200, "ready")
    publisher.wait_for(lambda: publisher.metric("facewatch_frames_published", {"camera": CAMERA}) >= 10, "published")
    assert publisher.metric("facewatch_camera_connected", {"camera": CAMERA}) == 1
    assert publisher.metric("facewatch_frames_received", {"camera": CAMERA}) >= 10
    assert publisher.metric("facewatch_kafka_connected") == 1 and publisher.metric("facewatch_ready") == 1

    # The camera goes away: not ready, saying why, and the gauge the camera alert watches drops.
    camera.kill()
    publisher.wait_for(lambda: publisher.http("/readyz")[0] == 503, "unready without the camera")
    _, body = publisher.http("/readyz")
    assert f"camera {CAMERA} not connected" in body, body
    assert publisher.metric("facewatch_camera_connected", {"camera": CAMERA}) == 0
    assert publisher.metric("facewatch_ready") == 0
    assert publisher.http("/healthz")[0] == 200, "a missing camera is no reason to restart the ingest"
    publisher.wait_for(lambda: publisher.metric("facewatch_rtsp_reconnects", {"camera": CAMERA}) >= 1, "retrying")

    camera.start()
    publisher.wait_for(lambda: publisher.http("/readyz")[0] == 200, "ready again with the camera back")

    # The broker goes away: frames wait unacknowledged, and after publish.broker_timeout_s (3 s) it is not ready.
    broker.stop()
    publisher.wait_for(lambda: publisher.http("/readyz")[0] == 503, "unready without the broker")
    _, body = publisher.http("/readyz")
    assert "kafka: broker unreachable" in body and "camera" not in body, body
    assert publisher.metric("facewatch_kafka_connected") == 0
    assert publisher.metric("facewatch_camera_connected", {"camera": CAMERA}) == 1

    # SIGTERM: the process ends (frames lost meanwhile: exit 1) and the endpoints with it.
    publisher.proc.send_signal(signal.SIGTERM)
    assert publisher.proc.wait(60) in (0, 1), publisher.log.read_text()[-4000:]
    with pytest.raises(OSError):
        publisher.http("/healthz")


def test_publish_port_in_use_is_a_one_line_error(kafka_broker, bars, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEWATCH_")}
        env["FACEWATCH_HTTP__HOST"] = "127.0.0.1"
        done = subprocess.run(
            [sys.executable, "-m", "worker", "publish", str(bars), "--camera", CAMERA, "--topic", "t",
             "--bootstrap", kafka_broker.bootstrap, "--http-port", str(port)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("facewatch: error: http: cannot listen on 127.0.0.1:") and "http.port" in line, line
