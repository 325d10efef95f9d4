"""What face_recognition's two programs share: choosing image files, threads, and reading images.

Both programs keep face_recognition's output, file selection and order (the folder's listing
order, which is also what face_recognition prints with --cpus 1). Faster underneath: images are
read and their faces found in ``--cpus`` threads (dlib's HOG releases the GIL), and the faces of
CHUNK images are encoded, or the CNN run on them, in one batch. An image that cannot be read is
reported on one line on stderr and skipped; the others are still processed, and the program then
exits with status 1 (face_recognition stops at the first such file with a traceback).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import click
import numpy as np
import PIL.Image

from worker.compat.face_recognition import api
from worker.errors import ImageError

CHUNK = 32  # images prepared together, whose faces then share one forward pass
MAX_SIZE = 1600  # face_recognition shrinks unknown images larger than this before looking for faces
IMAGE_NAME = re.compile(r".*\.(jpg|jpeg|png)", flags=re.I)  # face_recognition's pattern, used with re.match

T = TypeVar("T")


class ReadFailure(Exception):
    """An input image could not be used; the message is the one line to print."""


def image_files_in_folder(folder: str) -> list[str]:
    """The folder's image files (.jpg, .jpeg, .png), in the folder's listing order, as face_recognition picks them."""
    return [os.path.join(folder, f) for f in os.listdir(folder) if IMAGE_NAME.match(f)]


def thread_count(cpus: int) -> int:
    """Threads for --cpus: -1 means one per core."""
    if cpus == -1:
        return os.cpu_count() or 1
    if cpus < 1:
        raise click.BadParameter(f"must be -1 (all cores) or at least 1, got {cpus}", param_hint="'--cpus'")
    return cpus


def read_image(file: str, shrink: bool = False) -> np.ndarray:
    """The image as RGB; with ``shrink``, one larger than 1600 px is shrunk as face_recognition shrinks it.

    Raises ReadFailure naming the file when it cannot be read.
    """
    try:
        image = api.load_image_file(file)
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
        raise ReadFailure(f"{file}: cannot read image ({exc})") from None
    if shrink and max(image.shape) > MAX_SIZE:
        pil_img = PIL.Image.fromarray(image)
        pil_img.thumbnail((MAX_SIZE, MAX_SIZE), PIL.Image.LANCZOS)
        image = np.array(pil_img)
    return image


def report_failure(message: str) -> None:
    """One line on stderr."""
    click.echo(f"ERROR: {message}. Skipped.", err=True)


def in_chunks(
    items: Sequence[str], prepare: Callable[[str], T], threads: int
) -> Iterator[list[tuple[str, T | ReadFailure]]]:
    """``prepare`` run on the items in ``threads`` threads, handed back CHUNK at a time in order;
    a ReadFailure (or a bad image) stands in for the result of an item that failed."""

    def attempt(item: str) -> T | ReadFailure:
        try:
            return prepare(item)
        except ReadFailure as exc:
            return exc
        except ImageError as exc:
            return ReadFailure(f"{item}: {exc}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            yield list(zip(chunk, pool.map(attempt, chunk), strict=True))
