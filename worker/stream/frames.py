"""Frames, and their format as Kafka messages.

A frame message on the frames topic:
- key: the camera id (UTF-8), so one camera's frames stay in order on one partition;
- value: the frame as a JPEG image;
- headers (UTF-8 values): ``camera_id``; ``capture_ts_ms`` (Unix time of capture in
  milliseconds); ``seq`` (per-camera frame number, increasing); ``content_type``
  (``image/jpeg``); ``width`` and ``height`` (pixels, must match the JPEG).

Anything else is a bad frame: decode_frame_message raises BadFrame with a short reason code
that goes into the dead-letter message's ``facewatch_error`` header.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.errors import FacewatchError, ImageError, ImageTooLarge
from worker.vision.image import check_header, decode_image, encode_jpeg

CONTENT_TYPE = "image/jpeg"
MAX_CLOCK_AHEAD_S = 86_400.0  # camera clocks may run ahead of the worker's, but not by more than a day
REQUIRED_HEADERS = ("camera_id", "capture_ts_ms", "seq", "content_type", "width", "height")


@dataclass(frozen=True)
class KafkaPosition:
    """Where a frame came from on Kafka: what gets committed once its events are out."""

    topic: str
    partition: int
    offset: int


@dataclass
class Frame:
    """One decoded video frame of one camera."""

    camera_id: str
    seq: int
    timestamp: float  # capture time, Unix seconds
    image: np.ndarray  # RGB uint8, H x W x 3
    position: KafkaPosition | None = None
    received: float = field(default_factory=time.monotonic)  # when it entered the worker, for latency

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class BadFrame(FacewatchError):
    """A frame message that cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_frame_message(
    camera_id: str, seq: int, timestamp: float, image: np.ndarray, quality: int = 90
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a frame message."""
    headers = {
        "camera_id": camera_id,
        "capture_ts_ms": str(round(timestamp * 1000)),
        "seq": str(seq),
        "content_type": CONTENT_TYPE,
        "width": str(image.shape[1]),
        "height": str(image.shape[0]),
    }
    return camera_id.encode(), encode_jpeg(image, quality), [(k, v.encode()) for k, v in headers.items()]


def _header_map(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in headers or ():
        try:
            result[name] = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame("bad_header", f"header {name!r} is not UTF-8") from None
    return result


def _integer(headers: dict[str, str], name: str, minimum: int = 0) -> int:
    try:
        value = int(headers[name])
    except ValueError:
        raise BadFrame("bad_header", f"header {name!r} is not an integer: {headers[name][:40]!r}") from None
    if value < minimum:
        raise BadFrame("bad_header", f"header {name!r} is {value}, below {minimum}")
    return value


def capture_time(headers: Sequence[tuple[str, bytes | None]] | None) -> float | None:
    """A frame message's ``capture_ts_ms`` in Unix seconds, without decoding the frame (None: missing or bad)."""
    for name, value in headers or ():
        if name == "capture_ts_ms":
            try:
                return int((value or b"").decode("ascii")) / 1000.0
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def decode_frame_message(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    max_bytes: int,
    max_pixels: int,
    position: KafkaPosition | None = None,
) -> Frame:
    """Validate and decode a frame message; BadFrame says what is wrong with it."""
    found = _header_map(headers)
    missing = [name for name in REQUIRED_HEADERS if not found.get(name)]
    if missing:
        raise BadFrame("missing_header", f"missing headers: {', '.join(missing)}")
    if found["content_type"] != CONTENT_TYPE:
        raise BadFrame("content_type", f"content type {found['content_type'][:60]!r}, expected {CONTENT_TYPE}")
    camera_id = found["camera_id"]
    if key is not None and key.decode("utf-8", "replace") != camera_id:
        raise BadFrame("camera_mismatch", "message key and camera_id header differ")
    if not value:
        raise BadFrame("undecodable", "empty message value")
    if len(value) > max_bytes:
        raise BadFrame("oversized", f"frame of {len(value)} bytes is over the limit of {max_bytes}")
    width, height = _integer(found, "width", 1), _integer(found, "height", 1)
    if width * height > max_pixels:
        raise BadFrame("oversized", f"frame of {width}x{height} is over the limit of {max_pixels} pixels")
    seq = _integer(found, "seq")
    capture_ms = _integer(found, "capture_ts_ms")
    latest_ms = (time.time() + MAX_CLOCK_AHEAD_S) * 1000.0
    if capture_ms > latest_ms:
        # A far-future stamp would overflow datetimes in events and hold that identity's alerts in
        # cooldown on the camera until then.
        raise BadFrame("bad_header", f"capture_ts_ms {capture_ms} is more than a day ahead of this worker's clock")
    # The JPEG's own header is checked before decoding: headers that understate the size must not
    # get a huge image decoded.
    try:
        jpeg = check_header(value, max_pixels, "frame", formats=("jpeg",))
        if (jpeg.width, jpeg.height) != (width, height):
            raise BadFrame("size_mismatch", f"JPEG is {jpeg.width}x{jpeg.height}, headers say {width}x{height}")
        image = decode_image(value, max_pixels=max_pixels, name="frame", formats=("jpeg",))
    except ImageTooLarge as exc:
        raise BadFrame("oversized", str(exc)) from None
    except ImageError as exc:
        raise BadFrame("undecodable", str(exc)) from None
    if image.shape[:2] != (height, width):
        raise BadFrame("size_mismatch", f"JPEG is {image.shape[1]}x{image.shape[0]}, headers say {width}x{height}")
    return Frame(camera_id, seq, capture_ms / 1000.0, image, position)
