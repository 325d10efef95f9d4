"""face_recognition's ``face_recognition`` program, installed as ``facewatch-face-recognition``.

``facewatch-face-recognition KNOWN_PEOPLE_FOLDER IMAGE_TO_CHECK`` prints ``file,name`` (with
``--show-distance true``: ``file,name,distance``) for every face in the image, or in each image of
the folder: the names of the known people (file names without extension) within ``--tolerance``,
else ``unknown_person``; ``no_persons_found`` for an image without faces. The same lines as
face_recognition prints, in the folder's listing order; see cli_common for what is faster and how
unreadable files are handled.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

import click
import numpy as np

from worker.compat.face_recognition import api as face_recognition
from worker.compat.face_recognition.cli_common import (
    ReadFailure,
    image_files_in_folder,
    in_chunks,
    read_image,
    report_failure,
    thread_count,
)
from worker.compat.face_recognition.models import face_chips, face_models

__all__ = [
    "image_files_in_folder",
    "main",
    "print_result",
    "process_images",
    "process_images_in_process_pool",
    "scan_known_people",
    "test_image",
]


def _aligned(file: str, shrink: bool) -> np.ndarray:
    """The 150x150 chips of the faces HOG finds in the file, in face_encodings' order."""
    image = read_image(file, shrink)
    return face_chips(image, face_recognition._raw_face_landmarks(image, None, "small"))


Encoded = tuple[str, list[np.ndarray] | ReadFailure]


def _encode_files(files: Sequence[str], cpus: int, shrink: bool) -> Iterator[Encoded]:
    """Each file's face encodings (face_encodings' results) in order, CHUNK files per forward pass."""
    for chunk in in_chunks(files, lambda file: _aligned(file, shrink), thread_count(cpus)):
        chips = [found for _, found in chunk if not isinstance(found, ReadFailure)]
        descriptors = face_models().encode(np.concatenate(chips)) if chips else np.zeros((0, 128), np.float32)
        start = 0
        for file, found in chunk:
            if isinstance(found, ReadFailure):
                yield file, found
                continue
            yield file, [row.astype(np.float64) for row in descriptors[start : start + len(found)]]
            start += len(found)


def scan_known_people(known_people_folder: str, cpus: int = 1) -> tuple[list[str], list[np.ndarray]]:
    """Names (file names without extension) and first-face encodings of the folder's images."""
    known_names, known_face_encodings, _ = _scan_known_people(known_people_folder, cpus)
    return known_names, known_face_encodings


def _scan_known_people(known_people_folder: str, cpus: int) -> tuple[list[str], list[np.ndarray], int]:
    """scan_known_people, and how many files could not be read."""
    known_names, known_face_encodings, failures = [], [], 0
    for file, encodings in _encode_files(image_files_in_folder(known_people_folder), cpus, shrink=False):
        if isinstance(encodings, ReadFailure):
            report_failure(str(encodings))
            failures += 1
            continue
        if len(encodings) > 1:
            click.echo(f"WARNING: More than one face found in {file}. Only considering the first face.")
        if len(encodings) == 0:
            click.echo(f"WARNING: No faces found in {file}. Ignoring file.")
        else:
            known_names.append(os.path.splitext(os.path.basename(file))[0])
            known_face_encodings.append(encodings[0])
    return known_names, known_face_encodings, failures


def print_result(filename: str, name: str, distance: float | None, show_distance: bool = False) -> None:
    """One output line: ``filename,name`` or ``filename,name,distance``."""
    if show_distance:
        print(f"{filename},{name},{distance}")
    else:
        print(f"{filename},{name}")


def _report(
    image_to_check: str,
    unknown_encodings: list[np.ndarray],
    known_names: list[str],
    known_face_encodings: list[np.ndarray],
    tolerance: float,
    show_distance: bool,
) -> None:
    for unknown_encoding in unknown_encodings:
        distances = face_recognition.face_distance(known_face_encodings, unknown_encoding)
        result = list(distances <= tolerance)
        if True in result:
            for is_match, name, distance in zip(result, known_names, distances, strict=False):
                if is_match:
                    print_result(image_to_check, name, distance, show_distance)
        else:
            print_result(image_to_check, "unknown_person", None, show_distance)
    if not unknown_encodings:
        print_result(image_to_check, "no_persons_found", None, show_distance)


def test_image(
    image_to_check: str,
    known_names: list[str],
    known_face_encodings: list[np.ndarray],
    tolerance: float = 0.6,
    show_distance: bool = False,
) -> None:
    """Print the result lines of one image (ReadFailure when it cannot be read)."""
    unknown_image = read_image(image_to_check, shrink=True)
    unknown_encodings = face_recognition.face_encodings(unknown_image)
    _report(image_to_check, unknown_encodings, known_names, known_face_encodings, tolerance, show_distance)


def process_images(
    images_to_check: Sequence[str],
    known_names: list[str],
    known_face_encodings: list[np.ndarray],
    number_of_cpus: int,
    tolerance: float,
    show_distance: bool,
) -> int:
    """Print the result lines of every image in order; returns how many could not be read."""
    failures = 0
    for file, encodings in _encode_files(images_to_check, number_of_cpus, shrink=True):
        if isinstance(encodings, ReadFailure):
            report_failure(str(encodings))
            failures += 1
            continue
        _report(file, encodings, known_names, known_face_encodings, tolerance, show_distance)
        sys.stdout.flush()  # results appear as each chunk finishes, as face_recognition's per image
    return failures


# face_recognition's name for it (a process pool there, threads and batches here; the same arguments).
process_images_in_process_pool = process_images


@click.command()
@click.argument("known_people_folder")
@click.argument("image_to_check")
@click.option(
    "--cpus",
    default=1,
    help='number of CPU cores to use in parallel (can speed up processing lots of images). -1 means "use all in '
    'system"',
)
@click.option(
    "--tolerance",
    default=0.6,
    help="Tolerance for face comparisons. Default is 0.6. Lower this if you get multiple matches for the same person.",
)
@click.option(
    "--show-distance", default=False, type=bool, help="Output face distance. Useful for tweaking tolerance setting."
)
def main(known_people_folder: str, image_to_check: str, cpus: int, tolerance: float, show_distance: bool) -> None:
    """Recognise the known people (one image each in KNOWN_PEOPLE_FOLDER) in IMAGE_TO_CHECK (an image or a folder)."""
    thread_count(cpus)
    if not os.path.isdir(known_people_folder):
        raise click.ClickException(f"{known_people_folder} is not a folder")
    known_names, known_face_encodings, failures = _scan_known_people(known_people_folder, cpus)
    if os.path.isdir(image_to_check):
        files = image_files_in_folder(image_to_check)
        failures += process_images(files, known_names, known_face_encodings, cpus, tolerance, show_distance)
    else:
        try:
            test_image(image_to_check, known_names, known_face_encodings, tolerance, show_distance)
        except ReadFailure as exc:
            report_failure(str(exc))
            failures += 1
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
