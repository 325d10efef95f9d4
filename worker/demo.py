"""`facewatch demo`: the whole worker on embedded defaults, no Kafka, camera or download needed.

It enrolls one public-domain portrait that ships in a PyPI wheel (Grace Hopper, from
matplotlib) into a fresh watchlist, makes a short H.264 video in which she appears, then an
unenrolled person (Eileen Collins, from scikit-image), and runs the streaming worker on it as a
camera. Events print as they happen: a TrackStarted for each person, a FaceMatch for Hopper, and a
TrackEnded for each person, Collins's with outcome unknown.

With ``visitors=True`` (``facewatch demo --visitors``) Collins comes back a second time, visitor
counting is on (a fresh visitor store, a 1 s visit gap so her return 3 s later is a new visit), and her two
visits print as visit_started / visit_ended events of one anonymous visitor, the second returning.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from worker.config import Settings, load_settings
from worker.samples import SAMPLE_PORTRAITS, sample_path
from worker.stream.media import write_h264_mp4
from worker.vision.image import load_image

log = logging.getLogger(__name__)

FRAME_SIZE = (640, 480)
FPS = 15
ENROLLED = "Grace Hopper"
VISITOR = "Eileen Collins"


def _scene(portrait: np.ndarray, seconds: float, drift: int) -> Iterator[np.ndarray]:
    """The portrait, scaled to fit the frame, drifting sideways as a person in view would."""
    width, height = FRAME_SIZE
    scale = 0.8 * min(width / portrait.shape[1], height / portrait.shape[0])
    small = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frames = round(seconds * FPS)
    for i in range(frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        x = (width - small.shape[1]) // 2 + round(drift * (i / max(1, frames - 1) - 0.5))
        y = (height - small.shape[0]) // 2
        frame[y : y + small.shape[0], x : x + small.shape[1]] = small
        yield frame


def _empty(seconds: float) -> Iterator[np.ndarray]:
    width, height = FRAME_SIZE
    for _ in range(round(seconds * FPS)):
        yield np.full((height, width, 3), 40, np.uint8)


# Collins's first track ends (lost: tracking.max_age_s after her last face) about 1.7 s before she is
# back, by frame time; a 1 s gap makes her return a new visit whatever the machine's speed.
DEMO_VISIT_GAP_S = 1.0


def make_demo_video(path: Path, portraits: dict[str, np.ndarray], visitor_returns: bool = False) -> int:
    """Empty room, the enrolled person, empty room, the visitor, empty room (the visitor again, empty
    room); returns the frame count."""

    def frames() -> Iterator[np.ndarray]:
        yield from _empty(1.0)
        yield from _scene(portraits[ENROLLED], 3.0, drift=60)
        yield from _empty(2.0)
        yield from _scene(portraits[VISITOR], 3.0, drift=-60)
        yield from _empty(2.0)
        if visitor_returns:
            yield from _empty(1.0)
            yield from _scene(portraits[VISITOR], 3.0, drift=60)
            yield from _empty(2.0)

    return write_h264_mp4(path, frames(), fps=FPS)


def demo_settings(
    folder: Path, video: Path, realtime: bool, config_file: str | None = None, visitors: bool = False
) -> Settings:
    """The worker's settings for the demo: one file camera, a fresh watchlist, events on stdout."""
    overrides: dict = {
        "cameras": [{"id": "demo-camera", "url": str(video), "realtime": realtime}],
        "watchlist": {"store": str(folder / "watchlist.db")},
        "events": {"stdout": True, "kafka_topic": None},
        "frames": {"enabled": False},
        "http": {"port": 0},
    }
    if visitors:
        overrides["visitors"] = {
            "enabled": True,
            "store": str(folder / "visitors.db"),
            "visit_gap_s": DEMO_VISIT_GAP_S,
        }
    return load_settings(config_file, overrides)


def run_demo(
    realtime: bool = True, keep: Path | None = None, config_file: str | None = None, visitors: bool = False
) -> int:
    """Enroll, make the video, run the worker on it; returns the worker's exit status."""
    from worker.recognition import FaceRecognizer
    from worker.stream.runner import Worker
    from worker.watchlist.enroll import Enroller
    from worker.watchlist.store import WatchlistStore

    portraits_paths = {p.name: sample_path(p) for p in SAMPLE_PORTRAITS}
    portraits = {name: load_image(path) for name, path in portraits_paths.items()}
    with tempfile.TemporaryDirectory(prefix="facewatch-demo-") as temporary:
        folder = keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        video = folder / "demo.mp4"
        frames = make_demo_video(video, portraits, visitor_returns=visitors)
        settings = demo_settings(folder, video, realtime, config_file, visitors)
        recognizer = FaceRecognizer(settings)
        with WatchlistStore.from_config(settings.watchlist) as store:
            report = Enroller(recognizer, store).enroll(ENROLLED, [portraits_paths[ENROLLED]])
        print(
            f"demo: enrolled {ENROLLED} ({len(report.accepted)} template) into {settings.watchlist.store}; "
            f"{VISITOR} is not enrolled",
            file=sys.stderr,
        )
        if visitors:
            print(f"demo: visitor counting on ({settings.visitors.store}); {VISITOR} comes back once", file=sys.stderr)
        print(
            f"demo: camera 'demo-camera' plays {video} ({frames} frames at {FPS} fps); events follow", file=sys.stderr
        )
        worker = Worker(settings)
        worker.install_signal_handlers()
        return worker.run()
