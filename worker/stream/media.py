"""Writing H.264 videos (the demo's video, test videos), with PyAV and libx264.

OpenCV's wheels cannot encode H.264; PyAV ships FFmpeg with libx264.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_h264_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int | float | Fraction = 25,
    crf: int = 23,
    gop: int | None = None,
) -> int:
    """Encode RGB uint8 frames (H x W x 3, all the same even size) to an H.264 MP4; return the frame count.

    ``gop`` is the keyframe interval in frames (default: one keyframe a second), short so a client
    that joins a looping RTSP stream mid-way gets a decodable picture soon.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = None
        for frame_array in frames:
            array = np.asarray(frame_array)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"frames must be RGB uint8 H x W x 3 arrays, got {array.dtype} {array.shape}")
            if stream is None:
                height, width = array.shape[:2]
                # yuv420p subsamples chroma 2x2: libx264 rejects odd sizes.
                if height % 2 or width % 2:
                    raise ValueError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
                stream = container.add_stream("libx264", rate=rate)
                stream.width = width
                stream.height = height
                stream.pix_fmt = "yuv420p"
                keyint = gop or max(1, round(float(rate)))
                # No B-frames: every decoder (and RTP depayloader) handles the stream without reordering.
                stream.options = {"crf": str(crf), "g": str(keyint), "bf": "0", "preset": "veryfast"}
            elif array.shape[:2] != (stream.height, stream.width):
                raise ValueError(
                    f"frame {count} is {array.shape[1]}x{array.shape[0]}, not {stream.width}x{stream.height}"
                )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode(None):
            container.mux(packet)
    return count
