"""face_recognition's ``face_detection`` program, installed as ``facewatch-face-detection``.

``facewatch-face-detection IMAGE_TO_CHECK`` prints ``file,top,right,bottom,left`` for every face
in the image, or in each image of the folder, found without upsampling by ``--model`` hog
(default) or cnn: the same lines as face_recognition prints, in the folder's listing order. With
cnn, the images of a chunk go through the network together (cli_common says more).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
import numpy as np

from worker.compat.face_recognition import api as face_recognition
from worker.compat.face_recognition.api import Css
from worker.compat.face_recognition.cli_common import (
    ReadFailure,
    image_files_in_folder,
    in_chunks,
    read_image,
    report_failure,
    thread_count,
)

__all__ = [
    "image_files_in_folder",
    "main",
    "print_result",
    "process_images",
    "process_images_in_process_pool",
    "test_image",
]


def print_result(filename: str, location: Css) -> None:
    """One output line: ``filename,top,right,bottom,left``."""
    top, right, bottom, left = location
    print(f"{filename},{top},{right},{bottom},{left}")


def test_image(image_to_check: str, model: str) -> None:
    """Print the face boxes of one image (ReadFailure when it cannot be read)."""
    unknown_image = read_image(image_to_check)
    for face_location in face_recognition.face_locations(unknown_image, number_of_times_to_upsample=0, model=model):
        print_result(image_to_check, face_location)


def process_images(images_to_check: Sequence[str], number_of_cpus: int, model: str) -> int:
    """Print the face boxes of every image in order; returns how many could not be read."""
    failures = 0
    # hog: the whole detection runs in the threads; cnn: they read, and the network takes a chunk at once
    prepare = read_image if model == "cnn" else lambda file: _hog_boxes(file, model)
    for chunk in in_chunks(images_to_check, prepare, thread_count(number_of_cpus)):
        for file, found in _cnn_boxes(chunk) if model == "cnn" else chunk:
            if isinstance(found, ReadFailure):
                report_failure(str(found))
                failures += 1
                continue
            for face_location in found:
                print_result(file, face_location)
        sys.stdout.flush()
    return failures


def _hog_boxes(file: str, model: str) -> list[Css]:
    return face_recognition.face_locations(read_image(file), number_of_times_to_upsample=0, model=model)


def _cnn_boxes(chunk: list[tuple[str, np.ndarray | ReadFailure]]) -> list[tuple[str, list[Css] | ReadFailure]]:
    """The chunk with each image replaced by its CNN boxes, all found in one batch."""
    readable = [index for index, (_, found) in enumerate(chunk) if not isinstance(found, ReadFailure)]
    images = [chunk[index][1] for index in readable]
    boxes = face_recognition.batch_face_locations(images, number_of_times_to_upsample=0) if images else []
    result: list[tuple[str, list[Css] | ReadFailure]] = list(chunk)  # type: ignore[arg-type]
    for index, found in zip(readable, boxes, strict=True):
        result[index] = (chunk[index][0], found)
    return result


# face_recognition's name for it (a process pool there, threads and batches here; the same arguments).
process_images_in_process_pool = process_images


@click.command()
@click.argument("image_to_check")
@click.option("--cpus", default=1, help='number of CPU cores to use in parallel. -1 means "use all in system"')
@click.option("--model", default="hog", help='Which face detection model to use. Options are "hog" or "cnn".')
def main(image_to_check: str, cpus: int, model: str) -> None:
    """Print the face boxes in IMAGE_TO_CHECK (an image or a folder of images)."""
    thread_count(cpus)
    failures = 0
    if os.path.isdir(image_to_check):
        failures = process_images(image_files_in_folder(image_to_check), cpus, model)
    else:
        try:
            test_image(image_to_check, model)
        except ReadFailure as exc:
            report_failure(str(exc))
            failures = 1
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
