"""`facewatch detect`, `embed` and `compare`: the recognition core on still images and folders of them."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from worker.cli.common import add_model_flags, emit, report_error, settings_from_args
from worker.cli.inputs import ImageCounts, image_paths, print_summary
from worker.errors import ImageError
from worker.recognition import FaceRecognizer, ImageFaces, embedding_distance
from worker.runtime.progress import progress_bar
from worker.vision.image import load_image


def register(commands: argparse._SubParsersAction) -> None:
    """Add the three commands to the top-level parser."""
    detect = commands.add_parser(
        "detect",
        help="find faces in images and folders of images",
        description='One JSON line per face: {"image", "box": [left, top, right, bottom], "detector", '
        '"detector_score"}. Boxes are pixels, right and bottom inclusive. detector_score is the detector\'s own '
        "score, not comparable across detectors: retinaface a face probability (0-1), hog and mmod an SVM margin, "
        "haar the cascade's level weight. Detectors that find landmarks (retinaface) add "
        '"landmarks": [[x, y] x 5]: right eye, left eye, nose, right and left mouth corners (the subject\'s). '
        f"{NO_FACE_HELP}",
    )
    add_model_flags(detect, landmarks=False)
    add_image_arguments(detect)
    detect.set_defaults(handler=run_detect)

    embed = commands.add_parser(
        "embed",
        help="128-d face embeddings for every face in images and folders of images",
        description=f'One JSON line per face: {{"image", "box", "embedding": [128 floats]}}. {NO_FACE_HELP}',
    )
    add_model_flags(embed)
    add_image_arguments(embed)
    embed.set_defaults(handler=run_embed)

    compare = commands.add_parser(
        "compare",
        help="distances between every face of one image and every face of another",
        description="One JSON line per pair of faces (each face of IMAGE_A with each face of IMAGE_B), nearest "
        'first: {"image_a", "box_a", "image_b", "box_b", "distance", "threshold", "status", "same"}; status '
        'is "match" (and same true) when the distance is under the threshold, else "non_match" '
        "(0.6, dlib's; lower is stricter). An image without a face is an error.",
    )
    add_model_flags(compare)
    compare.add_argument("--threshold", type=float, help="same-person distance threshold (default 0.6)")
    compare.add_argument("image_a", metavar="IMAGE_A")
    compare.add_argument("image_b", metavar="IMAGE_B")
    compare.set_defaults(handler=run_compare)


NO_FACE_HELP = (
    'An image without a face gives one line {"image", "box": null, "status": "no_face"}. Folders are searched '
    "recursively for image files. A summary line (images, faces, images without a face, unreadable ones) "
    "ends the run on stderr; a progress bar shows on a terminal."
)
IMAGES_PER_BATCH = 16  # images decoded and embedded together: one forward pass, bounded memory


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE... (files or folders) and --quiet, for the per-image commands."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="an image file, or a folder of them (recursive)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")


def no_face_record(path: str) -> dict[str, Any]:
    """The line printed for an image in which no face was found."""
    return {"image": path, "box": None, "status": "no_face"}


def decoded_batches(
    paths: list[str], max_pixels: int, failures: list[str], bar: tqdm | None = None
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of decoded images; an image that does not decode is reported on stderr and skipped."""
    batch: list[tuple[str, np.ndarray]] = []
    for path in paths:
        try:
            batch.append((path, load_image(path, max_pixels=max_pixels)))
        except ImageError as exc:
            # Above the bar, so the error line is not overwritten by its next redraw.
            if bar is not None:
                bar.clear()
            report_error(str(exc))
            failures.append(path)
            if bar is not None:
                bar.update(1)
        if len(batch) == IMAGES_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


class ImageRun:
    """The images of a per-image command, its progress bar and its counts."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        found = image_paths(args.images)
        self.paths = found.paths
        self.command = command
        self.quiet = bool(args.quiet)
        self.counts = ImageCounts(skipped=found.skipped)
        self.failures: list[str] = []
        self.bar = progress_bar(total=len(self.paths), desc=command, unit="img", enabled=not self.quiet)

    def batches(self, max_pixels: int) -> Iterator[list[tuple[str, np.ndarray]]]:
        """The decoded images, in batches."""
        yield from decoded_batches(self.paths, max_pixels, self.failures, self.bar)

    def done(self, path: str, faces: int) -> None:
        """Count one image (and emit its no-face line when it had none)."""
        self.counts.images += 1
        self.counts.faces += faces
        if not faces:
            self.counts.no_face += 1
            emit(no_face_record(path))
        self.bar.update(1)

    def finish(self) -> int:
        """Close the bar, print the summary; the exit status (1 when an image could not be read)."""
        self.bar.close()
        self.counts.unreadable = len(self.failures)
        self.counts.images += len(self.failures)
        if not self.quiet:
            print_summary(self.counts, self.command)
        return 1 if self.failures else 0


def _run_images(args: argparse.Namespace, embed: bool) -> int:
    settings = settings_from_args(args)
    recognizer = FaceRecognizer(settings)
    detector = settings.detector.name
    run = ImageRun(args, "embed" if embed else "detect")
    for batch in run.batches(settings.images.max_pixels):
        paths = [path for path, _ in batch]
        images = [image for _, image in batch]
        if embed:
            for path, faces in zip(paths, recognizer.analyze(images), strict=True):
                for box, embedding in zip(faces.boxes, faces.embeddings, strict=True):
                    emit({"image": path, "box": box.as_list(), "embedding": [float(v) for v in embedding]})
                run.done(path, len(faces.boxes))
        else:
            for path, boxes in zip(paths, recognizer.detect(images), strict=True):
                for box in boxes:
                    record = {
                        "image": path,
                        "box": box.as_list(),
                        "detector": detector,
                        "detector_score": round(box.score, 6),
                    }
                    if box.landmarks is not None:
                        record["landmarks"] = [[round(x, 2), round(y, 2)] for x, y in box.landmarks]
                    emit(record)
                run.done(path, len(boxes))
    return run.finish()


def run_detect(args: argparse.Namespace) -> int:
    return _run_images(args, embed=False)


def run_embed(args: argparse.Namespace) -> int:
    return _run_images(args, embed=True)


def face_pairs(a: ImageFaces, b: ImageFaces, threshold: float) -> list[dict[str, Any]]:
    """Every face of ``a`` against every face of ``b``: box_a, box_b, distance, threshold, status, same; nearest first.

    ``status`` is the word every match record uses ("match", here else "non_match"); ``same``, its
    boolean, stays for the scripts that read it.
    """
    pairs = []
    for box_a, embedding_a in zip(a.boxes, a.embeddings, strict=True):
        for box_b, embedding_b in zip(b.boxes, b.embeddings, strict=True):
            distance = embedding_distance(embedding_a, embedding_b)
            pairs.append(
                {
                    "box_a": box_a.as_list(),
                    "box_b": box_b.as_list(),
                    "distance": round(distance, 6),
                    "threshold": round(threshold, 6),
                    "status": "match" if distance < threshold else "non_match",
                    "same": distance < threshold,
                }
            )
    return sorted(pairs, key=lambda pair: pair["distance"])


def run_compare(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    recognizer = FaceRecognizer(settings)
    paths = (args.image_a, args.image_b)
    images = [load_image(path, max_pixels=settings.images.max_pixels) for path in paths]
    faces = recognizer.analyze(images)
    for path, found in zip(paths, faces, strict=True):
        if not found.boxes:
            raise ImageError(f"{path}: no face found")
    # The network's own 1:1 threshold (dlib's 0.6); a trained model's is the configured unknown threshold.
    own = recognizer.embedder.distance_threshold
    default = own if own is not None else settings.watchlist.unknown_threshold
    threshold = float(args.threshold if args.threshold is not None else default)
    for pair in face_pairs(faces[0], faces[1], threshold):
        emit({"image_a": args.image_a, "box_a": pair.pop("box_a"), "image_b": args.image_b, **pair})
    return 0
