"""`facewatch bench streams`: how many cameras one worker keeps up with, played live from files.

The real clip is re-encoded once per size into a temporary H.264 file at the bench's frame rate
(frames picked by presentation time, resized with OpenCV for sizes other than the clip's own).
Each load step then runs the worker's own pipeline (`Pipeline.from_settings`, the given settings:
the product defaults unless overridden) fed by N file sources in ``live`` mode: paced at the
file's rate, decoded on each source's own thread, the newest frame winning when the pipeline is
behind (counted in ``facewatch_frames_dropped_total{reason="behind"}``, as for RTSP cameras). The
cameras start spread over one second, as unsynchronised cameras would be.

Measured over the step's window (after a warm-up), from the pipeline's own metrics:
- latency: a frame's capture time (the moment the file's clock says it is shown, which is when a
  camera would have captured it) to the moment the decide stage has decided its faces (the
  observer runs at the end of `DecideStage.decide`, before the sinks are called); p50, p95, max
  over the frames whose capture time falls in the window;
- dropped: frames the sources dropped because the pipeline had not taken the previous one;
- stage time: ms per decided frame spent in each stage (facewatch_stage_duration_seconds, summed
  over threads), the embedding batches (count, mean faces), CPU: the process's CPU time over the
  window's wall time and the cores it may run on, and per decided frame (less sensitive than
  latency to other work on the machine: it is what a frame costs, not how long it waited).

The knee is the largest N before the first failing step (p95 >= the latency budget, or a frame dropped).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from worker.config import Settings
from worker.errors import FacewatchError
from worker.obs.metrics import Metrics

if TYPE_CHECKING:
    from worker.watchlist.live import Watchlist

log = logging.getLogger(__name__)

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}
LATENCY_BUDGET_MS = 250.0  # issue 11: frame-to-decision p95 under this, with no frame dropped
DEFAULT_STEPS = (1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24)
STARTS_SPREAD_S = 1.0  # camera i of N starts i/N of this after the first


def parse_size(text: str) -> tuple[int, int]:
    """'360p', '720p', '1080p' or 'WxH' (even numbers) -> (width, height)."""
    if text in SIZES:
        return SIZES[text]
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None or min(size) < 16 or size[0] % 2 or size[1] % 2:
        raise FacewatchError(f"size {text!r}: use 360p, 720p, 1080p or WIDTHxHEIGHT (even, at least 16)")
    return size


def clip_at(source: Path, folder: Path, size: tuple[int, int], fps: float) -> Path:
    """``source`` re-encoded as H.264 at ``size`` and ``fps`` in ``folder``: the file the cameras play."""
    from worker.bench.pipeline import video_frames
    from worker.stream.media import write_h264_mp4

    def frames() -> Iterator[np.ndarray]:
        due = None  # presentation time of the next frame to keep (the first frame's need not be 0)
        for _, pts, image in video_frames(source):
            if due is not None and pts + 1e-6 < due:
                continue
            due = (pts if due is None else due) + 1.0 / fps
            if (image.shape[1], image.shape[0]) != size:
                shrink = size[0] < image.shape[1]
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            yield image

    path = folder / f"clip-{size[0]}x{size[1]}-{fps:g}fps.mp4"
    if write_h264_mp4(path, frames(), fps=fps) < 2:
        raise FacewatchError(f"video {source} is too short to play as a camera")
    return path


@dataclass
class StepResult:
    """One load step's figures."""

    size: tuple[int, int]
    fps: float
    streams: int
    seconds: float  # the window's wall time
    latencies_s: list[float]
    frames: int  # frames decided whose capture time fell in the window
    dropped: int
    stage_seconds: dict[str, float]
    batches: int
    faces_embedded: int
    cpu_seconds: float
    cores: int

    @property
    def p95_ms(self) -> float | None:
        return _percentile_ms(self.latencies_s, 95)

    def passed(self, budget_ms: float = LATENCY_BUDGET_MS) -> bool:
        """Kept up: p95 under the budget and nothing dropped."""
        return self.dropped == 0 and self.p95_ms is not None and self.p95_ms < budget_ms

    def row(self, budget_ms: float = LATENCY_BUDGET_MS) -> dict[str, Any]:
        frames = max(1, self.frames)
        expected = self.streams * self.fps * self.seconds
        return {
            "bench": "streams",
            "size": f"{self.size[0]}x{self.size[1]}",
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "streams": self.streams,
            "p95_ms": _rounded(self.p95_ms),
            "dropped": self.dropped,
            "cpu_percent": round(100.0 * self.cpu_seconds / self.seconds / self.cores, 1) if self.seconds else 0.0,
            "cpu_ms_per_frame": round(1000.0 * self.cpu_seconds / frames, 2),
            "p50_ms": _rounded(_percentile_ms(self.latencies_s, 50)),
            "max_ms": _rounded(1000.0 * max(self.latencies_s)) if self.latencies_s else None,
            "frames": self.frames,
            "frames_per_s": round(self.frames / self.seconds, 2) if self.seconds else 0.0,
            "decided_share": round(self.frames / expected, 3) if expected else 0.0,
            "seconds": round(self.seconds, 1),
            "stage_ms_per_frame": {stage: round(1000.0 * s / frames, 2) for stage, s in self.stage_seconds.items()},
            "batches": self.batches,
            "mean_batch": round(self.faces_embedded / self.batches, 2) if self.batches else 0.0,
            "cores": self.cores,
            "ok": self.passed(budget_ms),
        }


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.array(values) * 1000.0, q)) if values else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def knee(rows: Sequence[dict[str, Any]]) -> int | None:
    """The largest ``streams`` of the rows (in step order) before the first that did not keep up; None if none did."""
    best = None
    for row in rows:
        if not row["ok"]:
            break
        best = row["streams"] if best is None else max(best, row["streams"])
    return best


class _Snapshot:
    """The pipeline's counters at one moment: the window's figures are differences of two."""

    def __init__(self, metrics: Metrics) -> None:
        self.at = time.monotonic()
        self.cpu = time.process_time()
        registry = metrics.registry
        self.dropped = _sum_samples(metrics, "facewatch_frames_dropped_total")
        self.batches = registry.get_sample_value("facewatch_embedding_batch_size_count") or 0.0
        self.faces = registry.get_sample_value("facewatch_faces_embedded_total") or 0.0
        self.stages: dict[str, float] = {}
        for family in metrics.stage_seconds.collect():
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    self.stages[sample.labels["stage"]] = sample.value


def _sum_samples(metrics: Metrics, name: str) -> float:
    return sum(
        sample.value for family in metrics.registry.collect() for sample in family.samples if sample.name == name
    )


def run_step(
    settings: Settings,
    recognizer: Any,
    watchlist: Watchlist,
    clip: Path,
    size: tuple[int, int],
    fps: float,
    streams: int,
    seconds: float,
    warmup_s: float,
) -> StepResult:
    """N cameras playing ``clip`` live into a fresh pipeline for ``warmup_s`` + ``seconds``; the window's figures."""
    from worker.stream.pipeline import Pipeline
    from worker.stream.sources.video import FileSource
    from worker.stream.stages import FrameDecided

    metrics = Metrics()
    latencies: list[float] = []
    lock = threading.Lock()
    window = [float("inf"), float("inf")]  # capture times (Unix s) of the frames that count

    def observe(seen: FrameDecided) -> None:
        decided = time.time()
        if window[0] <= seen.frame.timestamp < window[1]:
            with lock:
                latencies.append(decided - seen.frame.timestamp)

    pipeline = Pipeline.from_settings(
        settings,
        recognizer,
        watchlist,
        [],
        metrics,
        observer=observe,
    )
    sources = [FileSource(f"cam-{i:02d}", clip, loop=True, live=True, metrics=metrics) for i in range(streams)]
    try:
        for source in sources:
            source.start(pipeline.submit)
            time.sleep(STARTS_SPREAD_S / streams)
        time.sleep(max(0.0, warmup_s - STARTS_SPREAD_S))
        first = _Snapshot(metrics)
        window[0] = time.time()
        window[1] = window[0] + seconds
        time.sleep(seconds)
        last = _Snapshot(metrics)
    finally:
        for source in sources:
            source.stop(timeout=30.0)
        pipeline.close(60.0)
    with lock:
        measured = list(latencies)
    return StepResult(
        size=size,
        fps=fps,
        streams=streams,
        seconds=last.at - first.at,
        latencies_s=measured,
        frames=len(measured),
        dropped=int(last.dropped - first.dropped),
        stage_seconds={stage: last.stages[stage] - first.stages.get(stage, 0.0) for stage in last.stages},
        batches=int(last.batches - first.batches),
        faces_embedded=int(last.faces - first.faces),
        cpu_seconds=last.cpu - first.cpu,
        cores=len(os.sched_getaffinity(0)),
    )


def run_streams_bench(
    video: Path,
    settings: Settings,
    sizes: Sequence[tuple[int, int]],
    fps: float,
    steps: Sequence[int],
    seconds: float,
    warmup_s: float = 3.0,
    enroll: Sequence[Path] = (),
    budget_ms: float = LATENCY_BUDGET_MS,
    keep_going: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Rows per size and step, each step up to the first that fails (every step with ``keep_going``)."""
    from worker.bench.pipeline import enrolled_names
    from worker.recognition import FaceRecognizer
    from worker.watchlist.enroll import Enroller, EnrollRules
    from worker.watchlist.live import Watchlist
    from worker.watchlist.store import WatchlistStore

    if not video.is_file():
        raise FacewatchError(f"video {video} does not exist")
    if fps <= 0 or seconds <= 0 or warmup_s < 0:
        raise FacewatchError("--fps and --seconds must be positive, --warmup at least 0")
    if not steps or min(steps) < 1:
        raise FacewatchError("--steps must be positive stream counts")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="facewatch-streams-") as folder:
        settings = settings.model_copy(deep=True)
        settings.watchlist.store = Path(folder) / "watchlist.db"
        settings.watchlist.index_path = None
        recognizer = FaceRecognizer(settings)
        with WatchlistStore.from_config(settings.watchlist) as store:
            enroller = Enroller(recognizer, store, EnrollRules(largest=True, min_face_size=1))
            for name, photo in (enrolled_names(enroll) if enroll else {}).items():
                if not enroller.enroll(name, [photo]).accepted:
                    raise FacewatchError(f"facewatch found no usable face in {photo}")
        watchlist = Watchlist(settings, recognizer.embedder.model_version, Metrics())
        try:
            for size in sizes:
                clip = clip_at(video, Path(folder), size, fps)
                for streams in steps:
                    result = run_step(
                        settings,
                        recognizer,
                        watchlist,
                        clip,
                        size,
                        fps,
                        streams,
                        seconds,
                        warmup_s,
                    )
                    row = result.row(budget_ms)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
                    if not row["ok"] and not keep_going:
                        break
        finally:
            watchlist.close()
    return rows
