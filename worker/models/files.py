"""Locating and verifying the pretrained model files.

The files come from the PyPI package ``face_recognition_models`` (dlib's models, public domain
except the 68-point landmark model, see docs). They are never downloaded at run time: they are
found on disk, checked by size and SHA-256, and a missing or damaged file is reported by name.
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

_verified: dict[tuple[str, int, int], str] = {}
_verified_lock = threading.Lock()


def packaged_model_dir() -> Path | None:
    """The ``models`` folder of the installed face_recognition_models package, if any.

    The package is located without being imported: its ``__init__`` needs pkg_resources,
    which recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models"
        if candidate.is_dir():
            return candidate
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
    path = folder / spec.filename
    if not path.is_file():
        raise ModelFileError(f"model file {spec.filename} ({spec.description}) not found in {folder}: {INSTALL_HINT}")
    stat = path.stat()
    if stat.st_size != spec.size:
        raise ModelFileError(
            f"model file {path} has {stat.st_size} bytes, expected {spec.size}: "
            f"it is truncated or a different file; reinstall it ({INSTALL_HINT})"
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
                f"it is corrupted or a different file; reinstall it ({INSTALL_HINT})"
            )
    return path
