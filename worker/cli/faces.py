"""`facewatch detect`, `embed` and `compare`: the recognition core on still images."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from worker.cli.common import add_model_flags, emit, report_error, settings_from_args
from worker.errors import ImageError
from worker.recognition import FaceRecognizer, embedding_distance
from worker.vision.image import load_image


def register(commands: argparse._SubParsersAction) -> None:
    """Add the three commands to the top-level parser."""
    detect = commands.add_parser(
        "detect",
        help="find faces in images",
        description='One JSON line per face: {"image", "box": [left, top, right, bottom], "score"}. '
        "Boxes are pixels, right and bottom inclusive. Detectors that find landmarks (retinaface) add "
        '"landmarks": [[x, y] x 5]: right eye, left eye, nose, right and left mouth corners (the subject\'s).',
    )
    add_model_flags(detect, landmarks=False)
    detect.add_argument("images", nargs="+", metavar="IMAGE")
    detect.set_defaults(handler=run_detect)

    embed = commands.add_parser(
        "embed",
        help="128-d face embeddings for every face in images",
        description='One JSON line per face: {"image", "box", "embedding": [128 floats]}.',
    )
    add_model_flags(embed)
    embed.add_argument("images", nargs="+", metavar="IMAGE")
    embed.set_defaults(handler=run_embed)

    compare = commands.add_parser(
        "compare",
        help="distance between the largest faces of two images",
        description='Prints {"distance", "same"}: same when the distance is under the threshold '
        "(0.6, dlib's; lower is stricter).",
    )
    add_model_flags(compare)
    compare.add_argument("--threshold", type=float, help="same-person distance threshold (default 0.6)")
    compare.add_argument("image_a", metavar="IMAGE_A")
    compare.add_argument("image_b", metavar="IMAGE_B")
    compare.set_defaults(handler=run_compare)


IMAGES_PER_BATCH = 16  # images decoded and embedded together: one forward pass, bounded memory


def decoded_batches(paths: list[str], max_pixels: int, failures: list[str]) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of decoded images; an image that does not decode is reported on stderr and skipped."""
    batch: list[tuple[str, np.ndarray]] = []
    for path in paths:
        try:
            batch.append((path, load_image(path, max_pixels=max_pixels)))
        except ImageError as exc:
            report_error(str(exc))
            failures.append(path)
        if len(batch) == IMAGES_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_images(args: argparse.Namespace, embed: bool) -> int:
    settings = settings_from_args(args)
    recognizer = FaceRecognizer(settings)
    failures: list[str] = []
    for batch in decoded_batches(args.images, settings.images.max_pixels, failures):
        paths = [path for path, _ in batch]
        images = [image for _, image in batch]
        if embed:
            for path, faces in zip(paths, recognizer.analyze(images), strict=True):
                for box, embedding in zip(faces.boxes, faces.embeddings, strict=True):
                    emit({"image": path, "box": box.as_list(), "embedding": [float(v) for v in embedding]})
        else:
            for path, boxes in zip(paths, recognizer.detect(images), strict=True):
                for box in boxes:
                    record = {"image": path, "box": box.as_list(), "score": round(box.score, 6)}
                    if box.landmarks is not None:
                        record["landmarks"] = [[round(x, 2), round(y, 2)] for x, y in box.landmarks]
                    emit(record)
    return 1 if failures else 0


def run_detect(args: argparse.Namespace) -> int:
    return _run_images(args, embed=False)


def run_embed(args: argparse.Namespace) -> int:
    return _run_images(args, embed=True)


def run_compare(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    recognizer = FaceRecognizer(settings)
    images = [load_image(path, max_pixels=settings.images.max_pixels) for path in (args.image_a, args.image_b)]
    faces = recognizer.analyze(images)
    embeddings = []
    for path, found in zip((args.image_a, args.image_b), faces, strict=True):
        index = found.largest()
        if index is None:
            raise ImageError(f"{path}: no face found")
        embeddings.append(found.embeddings[index])
    threshold = args.threshold if args.threshold is not None else recognizer.embedder.distance_threshold
    distance = embedding_distance(*embeddings)
    emit({"distance": round(distance, 6), "same": distance < threshold})
    return 0
