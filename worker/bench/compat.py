"""`facewatch bench compat`: face_recognition against worker.compat.face_recognition, in one run.

Both sides run the same code on the same images: the loop of face_recognition's documentation,
per image ``load_image_file``, ``face_locations`` (hog or cnn, upsampled once),
``face_encodings`` of those faces and ``compare_faces`` against the known people (the portraits,
encoded beforehand by each side). Two more benches show where the batched torch paths pay most:
``many-faces``, face_encodings of one image holding many faces (a mosaic of the photos' faces,
boxes given), and ``batch-cnn``, batch_face_locations over same-size images. Each row runs its
work ``rounds`` times, the rows taking turns so that load from other jobs falls on all alike, and
reports the median, with the processor time per item (all threads; steadier than the rate on a
shared machine). The faces counts show that both sides found the same faces.
"""

from __future__ import annotations

import re
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.bench.peers import import_face_recognition
from worker.compat import face_recognition as compat
from worker.compat.face_recognition.models import use_settings
from worker.config import Settings
from worker.errors import FacewatchError
from worker.samples import sample_paths

BENCHES = ("loop-hog", "loop-cnn", "many-faces", "batch-cnn")
IMPLS = ("face_recognition", "facewatch")
IMAGE_NAME = re.compile(r".*\.(jpg|jpeg|png)$", flags=re.I)
MOSAIC_FACES = 16  # faces in the many-faces image (a 4x4 grid of face crops)
BATCH_IMAGES = 8  # images per batch_face_locations call

Row = dict[str, Any]


def folder_images(folder: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files from the folder and its subfolders, in name order."""
    if not folder.is_dir():
        raise FacewatchError(f"{folder} is not a folder")
    found = sorted(path for path in folder.rglob("*") if path.is_file() and IMAGE_NAME.match(path.name))
    if not found:
        raise FacewatchError(f"no .jpg, .jpeg or .png images in {folder}")
    return found[:limit]


def _loop(fr: types.ModuleType, paths: Sequence[Path], known: list[np.ndarray], model: str) -> int:
    """face_recognition's documented loop; returns the faces found."""
    faces = 0
    for path in paths:
        image = fr.load_image_file(path)
        locations = fr.face_locations(image, model=model)
        for encoding in fr.face_encodings(image, locations):
            fr.compare_faces(known, encoding)
            faces += 1
    return faces


def _mosaic(fr: types.ModuleType, paths: Sequence[Path]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 4x4 grid of 200x200 face crops from the photos, and the face boxes HOG finds in it."""
    crops = []
    for path in paths:
        image = fr.load_image_file(path)
        for top, right, bottom, left in fr.face_locations(image):
            cy, cx, half = (top + bottom) // 2, (left + right) // 2, 100
            crop = image[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
            if crop.shape[:2] == (200, 200) and fr.face_locations(crop):
                crops.append(crop)
            break
        if len(crops) == MOSAIC_FACES:
            break
    if not crops:
        raise FacewatchError("many-faces needs a photo with a face at least 100 px from its edges")
    crops = [crops[i % len(crops)] for i in range(MOSAIC_FACES)]  # few photos: faces repeat
    rows = [np.concatenate(crops[i : i + 4], axis=1) for i in range(0, MOSAIC_FACES, 4)]
    mosaic = np.ascontiguousarray(np.concatenate(rows, axis=0))
    return mosaic, fr.face_locations(mosaic)


def _same_size_batch(fr: types.ModuleType, paths: Sequence[Path]) -> list[np.ndarray]:
    """BATCH_IMAGES images of one size (the photos cropped or padded to the first one's size)."""
    images = [fr.load_image_file(path) for path in paths[:BATCH_IMAGES]]
    height, width = images[0].shape[:2]
    batch = []
    for index in range(BATCH_IMAGES):
        image = images[index % len(images)][:height, :width]
        pad = ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0))
        batch.append(np.ascontiguousarray(np.pad(image, pad)))
    return batch


def _work(bench: str, fr: types.ModuleType, paths: Sequence[Path], known: list[np.ndarray]) -> Callable[[], int]:
    """The timed call of a bench on one side; it returns the faces it found."""
    if bench in ("loop-hog", "loop-cnn"):
        model = bench.removeprefix("loop-")
        return lambda: _loop(fr, paths, known, model)
    if bench == "many-faces":
        mosaic, locations = _mosaic(fr, paths)
        return lambda: len(fr.face_encodings(mosaic, locations))
    batch = _same_size_batch(fr, paths)
    return lambda: sum(map(len, fr.batch_face_locations(batch, 1, batch_size=BATCH_IMAGES)))


def _items(bench: str, paths: Sequence[Path], faces: int) -> tuple[int, str]:
    if bench == "many-faces":
        return faces, "faces/s"
    if bench == "batch-cnn":
        return BATCH_IMAGES, "images/s"
    return len(paths), "images/s"


def run_compat_bench(
    settings: Settings,
    paths: Sequence[Path],
    benches: Sequence[str] = BENCHES,
    rounds: int = 1,
) -> list[Row]:
    """One row per bench and side: items/s (median of ``rounds``), faces found, ratio to face_recognition."""
    unknown = set(benches) - set(BENCHES)
    if unknown:
        raise FacewatchError(f"unknown compat benches {sorted(unknown)}; known: {', '.join(BENCHES)}")
    if rounds < 1:
        raise FacewatchError(f"rounds must be at least 1, got {rounds}")
    if not paths:
        raise FacewatchError("no images to measure")
    use_settings(settings)
    sides = {"face_recognition": import_face_recognition(settings.models.dir), "facewatch": compat}
    known = {
        impl: [fr.face_encodings(fr.load_image_file(path))[0] for path in sample_paths().values()]
        for impl, fr in sides.items()
    }
    calls = {(bench, impl): _work(bench, fr, paths, known[impl]) for bench in benches for impl, fr in sides.items()}
    for (_, impl), call in calls.items():
        if impl == "facewatch":
            call()  # warm-up: models load on first use, torch picks its kernels (the peer's load at import)
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    faces: dict[tuple[str, str], int] = {}
    for _ in range(rounds):
        for key, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            faces[key] = call()
            seconds[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    rows = []
    for bench in benches:
        peer = float(np.median(seconds[bench, "face_recognition"]))
        for impl in IMPLS:
            median = float(np.median(seconds[bench, impl]))
            items, unit = _items(bench, paths, faces[bench, impl])
            rows.append(
                {
                    "bench": bench,
                    "impl": impl,
                    "items": items,
                    "faces": faces[bench, impl],
                    "per_s": items / median,
                    "unit": unit,
                    "ratio": peer / median,
                    "cpu_ms": 1000 * float(np.median(cpu[bench, impl])) / items,
                }
            )
    return rows
