"""Measure the scene-cut signals on a video whose cuts are known (docs/accuracy.md, "Tracks and scene cuts").

For every pair of frames ``stride`` apart (1: consecutive frames; more: a camera that drops frames,
or a low frame rate), two cheap signals, each on the 64x36 thumbnail of worker/stream/shots.py:

- ``colour``: total variation distance of the hue-saturation histograms (what the worker uses);
- ``grey``: mean absolute difference of the grey thumbnails, over 255.

Printed: the smallest value across a cut, the largest within a shot, how many pairs within a shot
reach the threshold (false cuts), and the cost of the worker's signal per frame at three frame sizes.

    PYTHONPATH=. python scripts/measure_scene_cuts.py ../shared/data/video/short_hamilton_clip.mp4 --cuts 20 82 211
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import av
import cv2
import numpy as np

from worker.config import TrackingConfig
from worker.stream.shots import THUMBNAIL, shot_change, shot_signature


def _grey(image: np.ndarray) -> np.ndarray:
    small = cv2.resize(image, THUMBNAIL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def main() -> None:
    """Print the signal table and the cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--cuts", type=int, nargs="+", required=True, help="first frame of each new shot")
    parser.add_argument("--threshold", type=float, default=TrackingConfig().scene_cut_threshold)
    args = parser.parse_args()
    with av.open(str(args.video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    colours = [shot_signature(frame) for frame in frames]
    greys = [_grey(frame) for frame in frames]
    print(f"{args.video.name}: {len(frames)} frames, cuts before frames {args.cuts}")
    print(
        "| frames apart | colour at cuts (min) | colour within shots (max) | false cuts "
        "| grey at cuts (min) | grey within shots (max) |"
    )
    print("|---|---|---|---|---|---|")
    for stride in (1, 2, 3, 5, 10):
        across: list[tuple[float, float]] = []
        within: list[tuple[float, float]] = []
        for first in range(stride):
            shown = range(first, len(frames), stride)
            for a, b in itertools.pairwise(shown):
                pair = (shot_change(colours[a], colours[b]), float(np.abs(greys[a] - greys[b]).mean()) / 255)
                (across if any(a < cut <= b for cut in args.cuts) else within).append(pair)
        cut, shot = np.array(across), np.array(within)
        false = int((shot[:, 0] >= args.threshold).sum())
        print(
            f"| {stride} | {cut[:, 0].min():.2f} | {shot[:, 0].max():.2f} | {false} of {len(shot)} | "
            f"{cut[:, 1].min():.3f} | {shot[:, 1].max():.3f} |"
        )
    for height, width in ((360, 640), (720, 1280), (1080, 1920)):
        image = np.ascontiguousarray(cv2.resize(frames[len(frames) // 2], (width, height)))
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(100):
                shot_signature(image)
            best = min(best, (time.perf_counter() - started) / 100)
        print(f"signature of a {width}x{height} frame: {best * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
