"""An encoded image's format and size, read from its header alone, before anything is decoded.

A few kilobytes of JPEG or PNG can announce gigapixels: decoding first and checking the size
afterwards costs the memory and time the check was meant to save. So the decoders only ever see
data whose size was read here and passed the pixel budget.

Only the formats facewatch decodes are read: JPEG, PNG, WebP, BMP and TIFF (the first page, which
is the one OpenCV decodes). Anything else is refused, so OpenCV's other decoders (JPEG 2000, GIF,
AVIF, HDR, EXR, PFM, Sun raster, PNM) are never reached by input from outside. The parsers follow
what the decoders themselves read: libjpeg's marker scan, libpng's IHDR, libwebp's VP8/VP8L/VP8X
headers, OpenCV's BMP reader and libtiff's first directory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from worker.errors import ImageError

FORMATS = ("jpeg", "png", "webp", "bmp", "tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers without a length field (TEM, RST0-7) and the start-of-frame markers that carry the size.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
# Real files reach their SOF within a few dozen markers; this bounds the work on hostile data.
_JPEG_MAX_MARKERS = 10_000
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
_TIFF_MAX_ENTRIES = 4096  # far more than any real first directory; bounds the work on hostile counts


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: the format (one of FORMATS) and the size in pixels."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes | bytearray | memoryview, name: str = "image") -> ImageHeader:
    """Format and size of encoded image bytes; ImageError (naming ``name``) when the header is not readable."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if data.startswith(b"\xff\xd8"):
        reader = _jpeg
    elif data.startswith(_PNG_SIGNATURE):
        reader = _png
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        reader = _webp
    elif data.startswith(b"BM"):
        reader = _bmp
    elif data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        reader = _tiff
    else:
        raise ImageError(f"{name}: not a JPEG, PNG, WebP, BMP or TIFF image")
    try:
        header = reader(data)
    except (struct.error, IndexError):
        raise ImageError(f"{name}: truncated {reader.__name__[1:].upper()} header") from None
    except ValueError as exc:
        raise ImageError(f"{name}: bad {reader.__name__[1:].upper()} header ({exc})") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(f"{name}: image has no pixels ({header.width}x{header.height})")
    return header


def _jpeg(data: bytes) -> ImageHeader:
    # libjpeg's marker scan: bytes between markers are skipped (it only warns), 0xFF fill bytes
    # may precede a marker code, segments carry a big-endian length that includes itself.
    position = 2
    for _ in range(_JPEG_MAX_MARKERS):
        position = data.find(b"\xff", position)
        if position < 0:
            raise IndexError
        while data[position] == 0xFF:
            position += 1
        marker = data[position]
        position += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in _JPEG_SOF:
            _, height, width = struct.unpack_from(">HxHH", data, position)
            return ImageHeader("jpeg", width, height)
        if marker in (0xD8, 0xD9, 0xDA):
            what = {0xD8: "second start of image", 0xD9: "end of image", 0xDA: "scan"}[marker]
            raise ValueError(f"{what} before SOF")
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2:
            raise ValueError(f"segment length {length}")
        position += length
    raise ValueError(f"no SOF in the first {_JPEG_MAX_MARKERS} markers")


def _png(data: bytes) -> ImageHeader:
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise ValueError("IHDR is not the first chunk")
    return ImageHeader("png", width, height)


def _webp(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes (2 bits of scaling above)
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("no VP8 key frame")
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":  # lossless: a signature byte, then 14 bits each of width - 1 and height - 1
        if data[20] != 0x2F:
            raise ValueError("no VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: the canvas, 24 bits each of width - 1 and height - 1
        if len(data) < 30:
            raise IndexError
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height)
    raise ValueError(f"unknown chunk {chunk!r}")


def _bmp(data: bytes) -> ImageHeader:
    (size,) = struct.unpack_from("<I", data, 14)
    if size == 12:  # OS/2 1.x: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    elif size >= 16:
        width, height = struct.unpack_from("<ii", data, 18)
        height = abs(height)  # negative: rows stored top-down
    else:
        raise ValueError(f"info header of {size} bytes")
    return ImageHeader("bmp", width, height)


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")  # BigTIFF: 64-bit offsets and counts, 20-byte entries
    if big:
        (offset,) = struct.unpack_from(order + "Q", data, 8)
        (count,) = struct.unpack_from(order + "Q", data, offset)
        first, entry_size = offset + 8, 20
    else:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        first, entry_size = offset + 2, 12
    if count > _TIFF_MAX_ENTRIES:
        raise ValueError(f"{count} directory entries")
    size: dict[int, int] = {}
    for entry in range(count):
        at = first + entry * entry_size
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag not in (_TIFF_WIDTH, _TIFF_HEIGHT):
            continue
        value_at = at + (12 if big else 8)
        formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
        if kind not in formats:
            raise ValueError(f"size tag {tag} of type {kind}")
        (size[tag],) = struct.unpack_from(order + formats[kind], data, value_at)
    if len(size) < 2:
        raise ValueError("no ImageWidth and ImageLength in the first directory")
    return ImageHeader("tiff", size[_TIFF_WIDTH], size[_TIFF_HEIGHT])
