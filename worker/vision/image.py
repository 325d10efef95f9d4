"""Decoding images into the one pixel format the pipeline uses: RGB, uint8, H x W x 3.

Everything that arrives from outside (files, Kafka message bodies) goes through here, so the
guards live here: empty or undecodable data, absurd sizes, grayscale, alpha and 16-bit images.
The size is read from the header (worker/vision/image_header.py) and checked against the pixel
budget before anything is decoded: decoding is where a small file costs gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from worker.config import MAX_PIXELS_DEFAULT
from worker.errors import ImageError, ImageTooLarge
from worker.vision.image_header import FORMATS, ImageHeader, read_header

DEFAULT_MAX_PIXELS = MAX_PIXELS_DEFAULT  # images.max_pixels
# OpenCV's own cap, set in worker/__init__.py before cv2 loads (fixed for the process from then on).
OPENCV_MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))


def check_header(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "image",
    formats: tuple[str, ...] = FORMATS,
) -> ImageHeader:
    """The image's header, once its format is one of ``formats`` and its size within the budget.

    ImageTooLarge when over ``max_pixels`` (or OpenCV's own cap); ImageError for anything else.
    """
    if len(data) == 0:
        raise ImageError(f"{name}: empty file, not an image")
    header = read_header(data, name)
    if header.format not in formats:
        raise ImageError(f"{name}: a {header.format.upper()} image, expected {' or '.join(formats).upper()}")
    size = f"{header.width}x{header.height}"
    if header.pixels > max_pixels:
        raise ImageTooLarge(f"{name}: {size} is over the limit of {max_pixels} pixels (images.max_pixels)")
    if header.pixels > OPENCV_MAX_PIXELS:
        raise ImageTooLarge(
            f"{name}: {size} is over OpenCV's limit of {OPENCV_MAX_PIXELS} pixels (OPENCV_IO_MAX_IMAGE_PIXELS)"
        )
    return header


def decode_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "image",
    formats: tuple[str, ...] = FORMATS,
) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, WebP, BMP, TIFF) to RGB uint8 H x W x 3.

    The size is checked from the header first (check_header): over budget, nothing is decoded.
    """
    check_header(data, max_pixels, name, formats)
    buffer = np.frombuffer(data, dtype=np.uint8)
    # COLOR turns gray into 3 channels and drops alpha; ANYDEPTH keeps 16-bit samples, which we scale.
    try:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({str(exc).strip().splitlines()[-1]})") from None
    if decoded is None:
        raise ImageError(f"{name}: not a decodable image (unknown format or corrupt data)")
    return to_rgb8(decoded, max_pixels=max_pixels, name=name, bgr=True)


def to_rgb8(
    pixels: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image", bgr: bool = False
) -> np.ndarray:
    """Normalise any decoded pixel array (gray, RGBA, 16-bit, float in 0..1) to contiguous RGB uint8."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name}: unsupported pixel layout {pixels.shape}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if height * width > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} is over the limit of {max_pixels} pixels (images.max_pixels)")
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype in (np.float32, np.float64):
        pixels = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported sample type {pixels.dtype}")
    channels = pixels.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    pixels = pixels[:, :, :3]
    if bgr:
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file to RGB uint8 H x W x 3; ImageError names the file on any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, max_pixels=max_pixels, name=str(path))


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return encoded.tobytes()
