"""File sources: paced or not, and live (the newest frame wins, as for RTSP), on real H.264 files."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.infra.media import color_bars, write_h264_mp4
from worker.obs.metrics import Metrics
from worker.stream.frames import Frame
from worker.stream.sources.video import FileSource

FRAMES = 20


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "bars.mp4"
    write_h264_mp4(path, color_bars(FRAMES, 160, 120), fps=50)
    return path


def _received(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("facewatch_frames_received_total", {"camera": "cam"}) or 0.0


def test_a_live_file_drops_the_frames_a_blocked_pipeline_did_not_take(bars: Path) -> None:
    metrics = Metrics()
    delivered: list[Frame] = []
    all_decoded = threading.Event()

    def deliver(frame: Frame) -> None:
        delivered.append(frame)
        if len(delivered) == 1:  # the pipeline is stuck on the first frame until the camera has sent them all
            # Until the last frame is in the slot: counted as received a moment before it is offered, so
            # the count alone let an earlier frame through (3 delivered, under load).
            while _received(metrics) < FRAMES or source.dropped < FRAMES - 2:
                all_decoded.wait(0.01)

    source = FileSource("cam", bars, live=True, metrics=metrics)
    source.start(deliver)
    assert source.finished.wait(60)
    # The pipeline took one frame (the first, or the second when it replaced the first before the delivering
    # thread woke), then every later one but the newest was replaced by the next; the newest (19) still came.
    first, last = delivered
    assert first.seq in (0, 1) and last.seq == FRAMES - 1
    assert source.dropped == FRAMES - 2
    assert metrics.registry.get_sample_value(
        "facewatch_frames_dropped_total", {"camera": "cam", "reason": "behind"}
    ) == (FRAMES - 2)
    assert last.timestamp - first.timestamp == pytest.approx((last.seq - first.seq) / 50, abs=1e-3)


@pytest.mark.parametrize("live", [False, True])
def test_a_file_read_by_a_pipeline_that_keeps_up_loses_nothing(bars: Path, live: bool) -> None:
    metrics = Metrics()
    delivered: list[int] = []
    source = FileSource("cam", bars, realtime=True, live=live, metrics=metrics)
    source.start(lambda frame: delivered.append(frame.seq))
    assert source.finished.wait(60)
    assert delivered == list(range(FRAMES)) and source.dropped == 0


def test_a_paced_file_waits_for_a_blocked_pipeline_instead_of_dropping(bars: Path) -> None:
    metrics = Metrics()
    delivered: list[int] = []

    def deliver(frame: Frame) -> None:
        delivered.append(frame.seq)
        if frame.seq == 0:  # decoding cannot run ahead: the source itself waits
            assert _received(metrics) == 1

    source = FileSource("cam", bars, realtime=True, metrics=metrics)
    source.start(deliver)
    assert source.finished.wait(60)
    assert delivered == list(range(FRAMES)) and source.dropped == 0
