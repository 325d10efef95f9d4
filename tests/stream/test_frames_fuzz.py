"""Fuzzing the frame message decoder (hypothesis): only BadFrame ever comes out; valid frames round-trip.

Inputs are Kafka messages as a hostile producer could send them: any key, any value (random bytes,
valid JPEGs with bytes flipped, cut or inserted, JPEGs that claim huge sizes), any headers (the
real names with hostile values, unknown names, values that are not UTF-8). tests/fuzzing.py says
how long a run is.
"""

from __future__ import annotations

import random
import time

import cv2
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzzing import fuzz, fuzz_structured, mutate, tried
from tests.infra.bombs import jpeg_claiming
from worker.stream.frames import REQUIRED_HEADERS, BadFrame, decode_frame_message, encode_frame_message

REASONS = {"missing_header", "bad_header", "content_type", "camera_mismatch", "undecodable", "oversized"}
REASONS.add("size_mismatch")  # docs/streaming.md lists these seven
LIMITS = {"max_bytes": 200_000, "max_pixels": 100_000}


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 8 + 1, width // 8 + 1, 3)) * 255).astype(np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


SEED_JPEGS = [_jpeg(64, 48, 0), _jpeg(17, 9, 1), _jpeg(320, 240, 2)]


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    """A valid JPEG with a few bytes flipped, cut, inserted or removed: mostly well-formed headers."""
    data = bytearray(draw(st.sampled_from(SEED_JPEGS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


integer_text = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["", " 7", "1_0", "+3", "0x10", "1e3", "١٢", "9" * 5000, "nan", "-0"]),
    st.text(max_size=12),
)
header_value = st.one_of(
    st.none(), st.binary(max_size=24), integer_text.map(str.encode), st.just(b"image/jpeg"), st.just(b"door-1")
)
headers = st.one_of(
    st.none(),
    st.lists(st.tuples(st.one_of(st.sampled_from(REQUIRED_HEADERS), st.text(max_size=12)), header_value), max_size=10),
)
values = st.one_of(
    st.none(),
    st.binary(max_size=256),
    mutated_jpegs(),
    st.sampled_from(SEED_JPEGS),
    st.tuples(st.integers(0, 65_535), st.integers(0, 65_535)).map(lambda size: jpeg_claiming(*size)),
)


def _valid_headers(width: int, height: int) -> list[tuple[str, bytes]]:
    _, _, found = encode_frame_message("door-1", 3, 1_700_000_000.0, np.zeros((height, width, 3), np.uint8))
    return found


# Half the messages carry a valid key and headers, so the broken JPEGs reach the image decoder.
valid_messages = st.tuples(st.integers(1, 400), st.integers(1, 400)).map(
    lambda size: (b"door-1", _valid_headers(*size))
)
hostile_messages = st.tuples(st.one_of(st.none(), st.binary(max_size=12), st.just(b"door-1")), headers)


@fuzz_structured
@given(message=st.one_of(valid_messages, hostile_messages), value=values)
@example(message=(b"door-1", _valid_headers(64, 48)), value=jpeg_claiming(7900, 7900))
@example(message=(b"door-1", [("capture_ts_ms", b"1" + b"0" * 23), *_valid_headers(64, 48)]), value=SEED_JPEGS[0])
def test_fuzz_frame_decoder_raises_only_bad_frame(message, value):
    tried("frames: hostile messages")
    _check_frame(*message, value)


def _check_frame(key: bytes | None, headers: list | None, value: bytes | None) -> None:
    """The property: a Frame that matches its headers and the limits, or BadFrame with a documented reason."""
    try:
        frame = decode_frame_message(key, value, headers, **LIMITS)
    except BadFrame as exc:
        assert exc.reason in REASONS and str(exc) and "\n" not in str(exc)
        return
    found = {name: (text or b"").decode() for name, text in headers or []}  # as the decoder reads them: last one wins
    assert frame.image.shape == (int(found["height"]), int(found["width"]), 3) and frame.image.dtype == np.uint8
    assert frame.width * frame.height <= LIMITS["max_pixels"] and frame.timestamp <= time.time() + 86_400


@fuzz_structured
@given(
    camera=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40),
    seq=st.integers(0, 2**63),
    timestamp_ms=st.integers(0, round(time.time() * 1000)),
    width=st.integers(1, 96),
    height=st.integers(1, 96),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_valid_frames_round_trip(camera, seq, timestamp_ms, width, height, seed):
    tried("frames: round trip")
    y, x = np.mgrid[0:height, 0:width]
    base = np.random.default_rng(seed).integers(0, 200, 3)
    image = np.clip(np.stack([x * 2 + base[0], y * 2 + base[1], x + y + base[2]], axis=-1), 0, 255).astype(np.uint8)
    key, value, headers = encode_frame_message(camera, seq, timestamp_ms / 1000, image, quality=95)
    frame = decode_frame_message(key, value, headers, **LIMITS)
    assert (frame.camera_id, frame.seq, frame.image.shape) == (camera, seq, image.shape)
    assert round(frame.timestamp * 1000) == timestamp_ms
    assert np.abs(frame.image.astype(int) - image.astype(int)).mean() < 6  # JPEG, lossy


def _seeded_message(seed: int) -> tuple[bytes | None, bytes | None, list | None]:
    """A hostile frame message built from one seed: cheap to draw, so the long run reaches 100,000s."""
    rng = random.Random(seed)
    width, height = rng.randrange(1, 400), rng.randrange(1, 400)
    headers: list | None = _valid_headers(width, height) if rng.random() < 0.7 else None
    if headers is not None and rng.random() < 0.3:  # one header damaged, duplicated or dropped
        name = rng.choice(REQUIRED_HEADERS)
        choice = rng.randrange(3)
        if choice == 0:
            headers = [(n, v) for n, v in headers if n != name]
        else:
            junk = rng.choice([b"", b"-1", b"1" + b"0" * rng.randrange(30), bytes([rng.randrange(256)]) * 3])
            headers = [*headers, (name, junk)] if choice == 1 else [(n, junk if n == name else v) for n, v in headers]
    mode = rng.randrange(4)
    if mode == 0:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
    elif mode == 1:
        value = jpeg_claiming(rng.randrange(65536), rng.randrange(65536))
    else:
        value = mutate(rng, rng.choice(SEED_JPEGS))
    key = rng.choice([b"door-1", b"door-1", None, b"other"])
    return key, value, headers


@fuzz
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_frame_decoder_seeded(seed):
    tried("frames: hostile messages (seeded)")
    key, value, headers = _seeded_message(seed)
    _check_frame(key, headers, value)
