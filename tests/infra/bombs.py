"""Small files that announce huge images ("decompression bombs"), built byte by byte.

Each is a real small image whose header is rewritten to claim a huge size: a decoder that trusts
the header allocates for the claimed size (libjpeg fills the missing data with grey, so the JPEG
still decodes); facewatch must refuse them from the header alone.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose start-of-frame says width x height."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of width x height 8-bit RGB pixels whose data stops after one row: a few hundred bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\0" * (1 + 3 * width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")
