"""Make test videos: H.264 MP4s (worker.stream.media) of synthetic frames."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from worker.stream.media import write_h264_mp4

__all__ = ["color_bars", "write_h264_mp4"]


def color_bars(count: int, width: int = 320, height: int = 240, moving: bool = True) -> Iterator[np.ndarray]:
    """Synthetic RGB frames: vertical colour bars plus a black square that moves 4 px a frame."""
    palette = np.array(
        [[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0], [0, 0, 255]],
        dtype=np.uint8,
    )
    columns = (np.arange(width) * len(palette) // width).astype(np.intp)
    base = np.repeat(palette[columns][None, :, :], height, axis=0)
    box = max(8, min(width, height) // 8)
    for i in range(count):
        frame = base.copy()
        if moving:
            x = (i * 4) % max(1, width - box)
            frame[height // 2 - box // 2 : height // 2 + box // 2, x : x + box] = 0
        yield frame
