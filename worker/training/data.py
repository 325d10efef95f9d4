"""Training faces: found, aligned once and cached.

Every image gets dlib's HOG detector (upsampled once) and the 68-point landmark model; its largest face
is cut twice: OpenFace's 96x96 affine chip (nn4.small2's input) and dlib's 150x150 chip (the teacher's
input, from the same landmarks). Images without a face, or that cannot be read, are skipped, counted
and reported by name; they never stop the run. The chips go to one .npz file per set of images (keyed by
the files' relative paths, sizes and modification times), so a second run, a resume or an evaluation of
the same images aligns nothing again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.errors import FacewatchError, ImageError
from worker.models.face_spec import CHIP_SIZE
from worker.models.nn4_small2 import INPUT_SIZE
from worker.vision.align import dlib_chips, openface_chips
from worker.vision.boxes import Box
from worker.vision.detectors.hog import HogDetector
from worker.vision.image import load_image
from worker.vision.landmarks import LandmarkPredictor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ALIGNMENT_VERSION = "hog1-68-openface96-dlib150-v2"  # change when the chips would change


@dataclass
class FaceSet:
    """Aligned faces: row i of each array is one face.

    ``labels`` number the identities (index into ``names``); ``different`` (identities x identities bool), when
    set, says which identities are known to be different people (tracks of a video seen at the same time);
    None means all distinct identities are different people (a folder per person).
    """

    small: np.ndarray  # (N, 96, 96, 3) uint8, OpenFace's alignment
    large: np.ndarray  # (N, 150, 150, 3) uint8, dlib's chips
    labels: np.ndarray  # (N,) int64
    names: list[str]
    sources: list[str]  # where each face came from (a path, or video#frame)
    different: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)  # 'path: why' for images that gave no face
    fallbacks: int = 0  # faces cut from the centre box because the detector found none (fallback=True)

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: Path) -> None:
        """Write the set as one .npz (written aside, then renamed: a killed run leaves no half file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        extra = {} if self.different is None else {"different": self.different}
        np.savez(
            partial,
            small=self.small,
            large=self.large,
            labels=self.labels,
            names=np.array(self.names, dtype=str),  # text arrays, not objects: loading runs no pickle
            sources=np.array(self.sources, dtype=str),
            skipped=np.array(self.skipped, dtype=str),
            fallbacks=np.array(self.fallbacks),
            **extra,
        )
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> FaceSet:
        """Read a set written by ``save``."""
        with np.load(path, allow_pickle=False) as data:
            return cls(
                data["small"],
                data["large"],
                data["labels"],
                [str(x) for x in data["names"]],
                [str(x) for x in data["sources"]],
                data["different"] if "different" in data.files else None,
                [str(x) for x in data["skipped"]],
                int(data["fallbacks"]),
            )


def scan_folder(root: Path, people: set[str] | None = None) -> list[tuple[Path, str]]:
    """(image, identity) for every image under ``root``: the identity is the image's folder relative to root
    ('.' for images directly in it). ``people``: keep only these identities."""
    if not root.is_dir():
        raise FacewatchError(f"--data {root}: not a folder")
    found = []
    for folder, _, files in sorted(os.walk(root)):
        identity = str(Path(folder).relative_to(root))
        if people is not None and identity not in people:
            continue
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((Path(folder) / name, identity))
    if not found:
        wanted = f" of the {len(people)} people asked for" if people is not None else ""
        raise FacewatchError(f"--data {root}: no image{wanted} ({', '.join(IMAGE_SUFFIXES)})")
    return found


def cache_key(root: Path, images: Sequence[tuple[Path, str]]) -> str:
    """Hash of the images' relative paths, identities, sizes and modification times, and the alignment."""
    digest = hashlib.sha256(ALIGNMENT_VERSION.encode())
    for path, identity in images:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{identity}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


# Where LFW's deep-funneled faces sit: the mean of HOG's boxes on them is 104 px wide, centred at (0.50, 0.53)
# of the 250x250 image.
CENTRED_SIDE = 0.42
CENTRED_Y = 0.53


def centred_box(height: int, width: int) -> Box:
    """The box where a face sits in an LFW-like crop (centred, 0.42 of the shorter side)."""
    side = round(CENTRED_SIDE * min(height, width))
    left, top = round(width / 2 - side / 2), round(CENTRED_Y * height - side / 2)
    return Box(left, top, left + side - 1, top + side - 1, 0.0)


class Aligner:
    """HOG detector + 68-point landmarks -> (96x96 OpenFace chip, 150x150 dlib chip) of one image's faces.

    ``detect`` False skips the detector: the images are face crops centred like LFW's and the landmarks are
    fitted in ``centred_box`` (a tenth of the time: the detector is most of it).
    """

    def __init__(self, model_dir: str | Path | None = None, detect: bool = True) -> None:
        self.detector = HogDetector(upsample=1) if detect else None
        self.predictor = LandmarkPredictor(68, model_dir)
        self.fallbacks = 0

    def chips(self, image: np.ndarray, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray]:
        """Both chips of each box."""
        shapes = self.predictor.shapes(image, boxes)
        return openface_chips(image, LandmarkPredictor.as_array(shapes)), dlib_chips(image, shapes)

    def largest(self, image: np.ndarray, fallback: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Both chips of the image's largest face; None when there is none, unless ``fallback``: then the centred
        box (``centred_box``), as `eval lfw` falls back for missed faces."""
        boxes = self.detector.detect(image) if self.detector is not None else []
        if not boxes:
            if self.detector is not None and not fallback:
                return None
            self.fallbacks += self.detector is not None
            boxes = [centred_box(*image.shape[:2])]
        box = max(boxes, key=lambda b: b.area)
        small, large = self.chips(image, [box])
        return small[0], large[0]


def align_images(
    images: Sequence[tuple[Path, str]],
    model_dir: str | Path | None = None,
    fallback: bool = False,
    progress: Callable[[int], None] | None = None,
    detect: bool = True,
) -> FaceSet:
    """Align the largest face of every image (see ``Aligner``); unreadable or faceless images skipped."""
    aligner = Aligner(model_dir, detect)
    names = sorted({identity for _, identity in images})
    number = {name: i for i, name in enumerate(names)}
    small, large, labels, sources, skipped = [], [], [], [], []
    for path, identity in images:
        try:
            image = load_image(path)
        except (ImageError, OSError) as exc:
            skipped.append(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            log.warning("skipping %s", skipped[-1])
        else:
            faces = aligner.largest(image, fallback=fallback)
            if faces is None:
                skipped.append(f"{path}: no face found")
            else:
                small.append(faces[0])
                large.append(faces[1])
                labels.append(number[identity])
                sources.append(str(path))
        if progress is not None:
            progress(1)
    return FaceSet(
        np.stack(small) if small else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8),
        np.stack(large) if large else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
        np.array(labels, np.int64),
        names,
        sources,
        None,
        skipped,
        aligner.fallbacks,
    )


def cached_faces(
    root: Path,
    images: Sequence[tuple[Path, str]],
    cache_dir: Path | None,
    model_dir: str | Path | None = None,
    fallback: bool = False,
    progress: Callable[[int], None] | None = None,
    detect: bool = True,
) -> FaceSet:
    """``align_images`` through the cache in ``cache_dir`` (None: no cache)."""
    if cache_dir is None:
        return align_images(images, model_dir, fallback, progress, detect)
    mode = "hog" if detect else "centred"
    path = cache_dir / f"chips-{cache_key(root, images)}-{mode}{'-fallback' if fallback else ''}.npz"
    if path.exists():
        return FaceSet.load(path)
    faces = align_images(images, model_dir, fallback, progress, detect)
    faces.save(path)
    return faces


def lfw_pair_people(pairs_file: Path) -> set[str]:
    """The people named in an LFW pairs file (View 1's pairsDevTrain.txt: 2,132 people; pairsDevTest.txt: 963)."""
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()[1:]
    except OSError as exc:
        raise FacewatchError(f"cannot read {pairs_file}: {exc.strerror or exc}") from None
    people: set[str] = set()
    for number, line in enumerate(lines, start=2):
        fields = line.split("\t") if line.strip() else []
        if len(fields) == 3:
            people.add(fields[0])
        elif len(fields) == 4:
            people.update((fields[0], fields[2]))
        elif fields:
            raise FacewatchError(f"{pairs_file}:{number}: expected 3 or 4 tab-separated fields, got {len(fields)}")
    return people
