"""The frame message codec: round trip and bad messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.infra.bombs import jpeg_claiming
from worker.stream.frames import BadFrame, decode_frame_message, encode_frame_message

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 10_000_000}


def _image(width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def test_frame_message_round_trip():
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it close
    key, value, headers = encode_frame_message("door-1", 7, 1700000000.123, image)
    frame = decode_frame_message(key, value, headers, **LIMITS)
    assert (frame.camera_id, frame.seq, frame.image.shape) == ("door-1", 7, image.shape)
    assert abs(frame.timestamp - 1700000000.123) < 1e-3
    assert np.abs(frame.image.astype(int) - image.astype(int)).mean() < 4  # JPEG, lossy


def _without(headers, name):
    return [(k, v) for k, v in headers if k != name]


def _with(headers, name, value):
    return [(k, value if k == name else v) for k, v in headers]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda k, v, h: (k, v, _without(h, "seq")), "missing_header"),
        (lambda k, v, h: (k, v, None), "missing_header"),
        (lambda k, v, h: (k, v, _with(h, "content_type", b"image/png")), "content_type"),
        (lambda k, v, h: (k, v, _with(h, "seq", b"seven")), "bad_header"),
        (lambda k, v, h: (k, v, _with(h, "width", b"0")), "bad_header"),
        (lambda k, v, h: (k, v, _with(h, "width", b"\xff\xfe")), "bad_header"),
        (lambda k, v, h: (k, v, _with(h, "capture_ts_ms", b"1" + b"0" * 23)), "bad_header"),  # overflowed datetimes
        (lambda k, v, h: (k, v, _with(h, "capture_ts_ms", str(int(4e12)).encode())), "bad_header"),  # year 2096
        (lambda k, v, h: (b"other-camera", v, h), "camera_mismatch"),
        (lambda k, v, h: (k, b"", h), "undecodable"),
        (lambda k, v, h: (k, b"\xff\xd8garbage", h), "undecodable"),
        (lambda k, v, h: (k, v, _with(h, "width", b"65")), "size_mismatch"),
        (lambda k, v, h: (k, v + b"\0" * 1_000_000, h), "oversized"),
        (lambda k, v, h: (k, v, _with(_with(h, "width", b"100000"), "height", b"100000")), "oversized"),
        # Headers that understate the JPEG: refused from its header, never decoded (issue 16).
        (lambda k, v, h: (k, jpeg_claiming(7900, 7900), h), "oversized"),
        (lambda k, v, h: (k, jpeg_claiming(80, 60), h), "size_mismatch"),
        (lambda k, v, h: (k, cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes(), h), "undecodable"),
    ],
)
def test_bad_frame_messages_say_why(change, reason):
    key, value, headers = change(*encode_frame_message("door-1", 1, 1.0, _image()))
    with pytest.raises(BadFrame) as caught:
        decode_frame_message(key, value, headers, **LIMITS)
    assert caught.value.reason == reason
