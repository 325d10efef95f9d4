"""The peer libraries the benchmarks (and the compat tests) measure facewatch against."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from worker.errors import FacewatchError
from worker.models.files import FACE_RESNET, MMOD_DETECTOR, SHAPE_PREDICTOR_5, SHAPE_PREDICTOR_68, model_path


def import_face_recognition(model_dir: Path | None = None) -> types.ModuleType:
    """face_recognition, with its model-locating package answered from our model lookup.

    face_recognition_models' ``__init__`` imports pkg_resources, which current setuptools no longer
    ships, so importing face_recognition fails although the model files are installed. We put a
    module with the same four functions in its place; the files themselves are the same.
    """
    if importlib.util.find_spec("face_recognition") is None:
        raise FacewatchError(
            "the peer library is not installed: pip install --no-deps face_recognition==1.3.0 "
            "(--no-deps: its dlib requirement would compile dlib; dlib-bin is already installed)"
        )
    # Resolved before the stand-in is registered: our lookup itself asks importlib about the package.
    paths = {
        "pose_predictor_model_location": str(model_path(SHAPE_PREDICTOR_68, model_dir)),
        "pose_predictor_five_point_model_location": str(model_path(SHAPE_PREDICTOR_5, model_dir)),
        "face_recognition_model_location": str(model_path(FACE_RESNET, model_dir)),
        "cnn_face_detector_model_location": str(model_path(MMOD_DETECTOR, model_dir)),
    }
    shim = types.ModuleType("face_recognition_models")
    for function, path in paths.items():
        setattr(shim, function, lambda path=path: path)
    saved = sys.modules.get("face_recognition_models")
    sys.modules["face_recognition_models"] = shim
    try:
        import face_recognition
    finally:
        if saved is not None:
            sys.modules["face_recognition_models"] = saved
        else:
            del sys.modules["face_recognition_models"]
    return face_recognition
