"""Dataset embeddings cached on disk, so benchmarks and evaluations embed a dataset once.

The cache key covers everything that changes the vectors: the face network's SHA-256, the
detector settings (precisions as resolved on this machine), the embedder's precision when not
fp32, the landmarks section (model and alignment), face choice, fallback and flip settings, and
the exact file list (relative paths, sizes and modification times). A changed image or setting
makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import Settings
from worker.evaluation.dataset import DatasetEmbedder, DatasetEmbeddings
from worker.evaluation.openset import dataset_images_root, list_identities
from worker.models.face_spec import DEFAULT_MODEL
from worker.models.files import FACE_RESNET
from worker.recognition import FaceRecognizer
from worker.runtime.device import resolve_precision, select_device

CACHE_ENV = "FACEWATCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """$FACEWATCH_CACHE_DIR, else $XDG_CACHE_HOME/facewatch, else ~/.cache/facewatch."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facewatch"


def _detector_recipe(settings: Settings) -> dict[str, Any]:
    """The detector section as cached: precisions as they resolve on this machine ('auto' -> fp32 or bf16)."""
    recipe = settings.detector.model_dump(mode="json")
    device = select_device(settings.detector.device)
    recipe["retinaface_precision"] = resolve_precision(settings.detector.retinaface_precision, device)
    mmod = resolve_precision(recipe.pop("mmod_precision"), device)
    if mmod != "fp32":
        recipe["mmod_precision"] = mmod
    return recipe


def cache_key(embedder: DatasetEmbedder, paths: Sequence[Path], root: Path) -> str:
    """A hex digest naming the embeddings of ``paths`` (relative to ``root``) made by ``embedder``."""
    settings = embedder.recognizer.settings
    recipe = {
        # dlib's ResNet by its file; a trained model by its weights (model_version hashes them)
        "model": FACE_RESNET.sha256
        if settings.embedder.model == DEFAULT_MODEL
        else embedder.recognizer.embedder.model_version,
        "detector": _detector_recipe(settings),
        "landmarks": settings.landmarks.model_dump(mode="json"),
        "face_choice": embedder.face_choice,
        "fallback": embedder.fallback,
        "flip_average": embedder.flip_average,
    }
    # bf16 moves every vector a little: its embeddings are cached apart. fp32 adds nothing, so the
    # entries made before precisions could be chosen on CPU stay valid.
    precision = embedder.recognizer.embedder.arithmetic
    if precision != "fp32":
        recipe["embedder_precision"] = precision
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cached_embed(
    embedder: DatasetEmbedder,
    paths: Sequence[Path],
    root: Path,
    cache_dir: Path | None = None,
    description: str = "images",
) -> DatasetEmbeddings:
    """``embedder.embed(paths)``, loaded from ``cache_dir`` when this exact run was done before."""
    paths = [Path(p) for p in paths]
    directory = cache_dir or default_cache_dir()
    stem = directory / f"embeddings-{cache_key(embedder, paths, root)}"
    vectors_file, status_file = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if vectors_file.is_file() and status_file.is_file():
        embeddings = np.load(vectors_file)
        status = json.loads(status_file.read_text())["status"]
        if embeddings.shape == (len(paths), 128) and len(status) == len(paths):
            return DatasetEmbeddings(paths, embeddings, status)
    result = embedder.embed(paths, description=description)
    directory.mkdir(parents=True, exist_ok=True)
    # Write to temporary names first: a run killed mid-write must not leave a truncated entry behind.
    np.save(vectors_file.with_suffix(".tmp.npy"), result.embeddings)
    status_file.with_suffix(".tmp").write_text(json.dumps({"status": result.status}))
    vectors_file.with_suffix(".tmp.npy").replace(vectors_file)
    status_file.with_suffix(".tmp").replace(status_file)
    return result


def embed_identity_tree(
    directory: Path,
    settings: Settings,
    cache_dir: Path | None = None,
    progress: bool = True,
    use_cache: bool = True,
    people: set[str] | None = None,
    **embedder_options: Any,
) -> tuple[dict[str, list[Path]], list[str], DatasetEmbeddings]:
    """Embed every image of a folder-per-identity tree (only ``people``'s, when given): (identities, label per
    row, embeddings)."""
    identities = list_identities(directory, people)
    paths = [path for images in identities.values() for path in images]
    labels = [name for name, images in identities.items() for _ in images]
    embedder = DatasetEmbedder(FaceRecognizer(settings), progress=progress, **embedder_options)
    root = dataset_images_root(directory)
    if use_cache:
        result = cached_embed(embedder, paths, root, cache_dir, description=root.name)
    else:
        result = embedder.embed(paths, description=root.name)
    return identities, labels, result
