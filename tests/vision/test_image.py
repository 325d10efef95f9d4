"""Image decoding guards: sizes read from headers, the pixel budget applied before decoding."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.infra.bombs import jpeg_claiming, png_claiming
from worker.config import Settings
from worker.errors import ImageError, ImageTooLarge
from worker.samples import sample_paths
from worker.vision.image import OPENCV_MAX_PIXELS, check_header, decode_image, load_image
from worker.vision.image_header import read_header


def _encoded() -> dict[str, bytes]:
    """The same odd-sized picture in every format and flavour facewatch reads, by two encoders."""
    rng = np.random.default_rng(3)
    rgba = (rng.random((41, 67, 4)) * 255).astype(np.uint8)
    files: dict[str, bytes] = {}
    for ext, params in [
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # lossless
        (".bmp", []),
        (".tiff", []),
    ]:
        files[f"opencv {ext} {params}"] = cv2.imencode(ext, rgba[:, :, :3], params)[1].tobytes()
    files["opencv 16-bit png"] = cv2.imencode(".png", rgba.astype(np.uint16) * 257)[1].tobytes()
    for mode, fmt, options in [
        ("RGBA", "WEBP", {}),  # extended (VP8X) header
        ("RGB", "JPEG", {"icc_profile": b"\0" * 70_000}),  # APP2 segments before the frame
        ("L", "PNG", {}),
        ("P", "BMP", {}),
        ("RGB", "TIFF", {"compression": "tiff_lzw"}),
        ("RGB", "TIFF", {"big_tiff": True}),
    ]:
        out = io.BytesIO()
        Image.fromarray(rgba, "RGBA").convert(mode).save(out, fmt, **options)
        files[f"pillow {mode} {fmt} {sorted(options)}"] = out.getvalue()
    return files


@pytest.mark.parametrize(("name", "data"), sorted(_encoded().items()))
def test_header_size_is_the_decoded_size(name, data):
    header = read_header(data, name)
    decoded = decode_image(data, name=name)
    assert (header.height, header.width) == decoded.shape[:2] == (41, 67)


def test_real_photos_headers_match_their_pixels():
    for path in sample_paths().values():
        header = read_header(path.read_bytes())
        assert (header.height, header.width) == load_image(path).shape[:2]


def test_a_7900x7900_jpeg_is_refused_from_its_header_by_default(tmp_path):
    # 62.4 Mpx: under the old default of 64 Mpx, so it was decoded (187 MB) and `detect` took 3.4 GB.
    bomb = jpeg_claiming(7900, 7900)
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb)
    limit = Settings().images.max_pixels
    with pytest.raises(ImageTooLarge) as caught:
        load_image(path, limit)
    assert str(caught.value) == f"{path}: 7900x7900 is over the limit of {limit} pixels (images.max_pixels)"
    # Only the header is needed: the bytes before the scan data give the same answer, so nothing was decoded.
    header_only = bomb[: bomb.index(b"\xff\xda")]
    with pytest.raises(ImageTooLarge, match="7900x7900 is over the limit"):
        decode_image(header_only, limit)
    assert decode_image(bomb, max_pixels=7900 * 7900).shape == (7900, 7900, 3)  # within a raised budget it decodes


def test_a_20000x20000_png_gets_a_clear_message_not_opencvs_assertion(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(20000, 20000))
    with pytest.raises(ImageError) as caught:
        load_image(path)
    limit = Settings().images.max_pixels
    assert str(caught.value) == f"{path}: 20000x20000 is over the limit of {limit} pixels (images.max_pixels)"
    # A budget raised past OpenCV's own cap (which would fail with its assertion text) is named too.
    with pytest.raises(ImageTooLarge) as caught:
        load_image(path, max_pixels=10**12)
    assert str(caught.value) == (
        f"{path}: 20000x20000 is over OpenCV's limit of {OPENCV_MAX_PIXELS} pixels (OPENCV_IO_MAX_IMAGE_PIXELS)"
    )


def test_other_formats_are_refused_unread():
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    ppm = cv2.imencode(".ppm", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for data in (gif.getvalue(), ppm, b"not an image"):
        with pytest.raises(ImageError, match=r"^photo: not a JPEG, PNG, WebP, BMP or TIFF image$"):
            decode_image(data, name="photo")
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageError, match=r"^frame: a PNG image, expected JPEG$"):
        decode_image(png, name="frame", formats=("jpeg",))


@pytest.mark.parametrize(("name", "data"), sorted(_encoded().items()))
def test_cut_headers_are_one_line_image_errors(name, data):
    for end in range(1, 40):
        try:
            check_header(data[:end], name=name)
        except ImageError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{name}: ")


def test_zero_sized_and_malformed_headers():
    with pytest.raises(ImageError, match="has no pixels"):
        check_header(jpeg_claiming(0, 16))
    with pytest.raises(ImageError, match="has no pixels"):
        check_header(png_claiming(0, 0))
    with pytest.raises(ImageError, match="bad JPEG header"):
        check_header(b"\xff\xd8\xff\xe0\x00\x01")  # a segment length below 2
    with pytest.raises(ImageError, match="bad JPEG header"):
        check_header(b"\xff\xd8" + b"\xff\x01" * 20_000)  # marker after marker, never a frame
