"""Finding and checking dlib's model files, and reading dlib's DNN format."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from worker.errors import ModelFileError
from worker.models.dlib_format import _Stream, load_network, parse_network
from worker.models.face_resnet import load_face_resnet
from worker.models.files import (
    ALL_MODELS,
    FACE_RESNET,
    MMOD_DETECTOR,
    SHAPE_PREDICTOR_5,
    model_dir,
    model_path,
    packaged_model_dir,
)


def test_packaged_models_are_found_and_verified():
    folder = packaged_model_dir()
    assert folder is not None and folder.name == "models"
    for spec in ALL_MODELS:
        assert model_path(spec).stat().st_size == spec.size


def test_model_dir_override_by_env(tmp_path, monkeypatch):
    (tmp_path / SHAPE_PREDICTOR_5.filename).symlink_to(model_path(SHAPE_PREDICTOR_5))
    monkeypatch.setenv("FACEWATCH_MODEL_DIR", str(tmp_path))
    assert model_dir() == tmp_path
    assert model_path(SHAPE_PREDICTOR_5) == tmp_path / SHAPE_PREDICTOR_5.filename
    with pytest.raises(
        ModelFileError, match=r"mmod_human_face_detector\.dat .*not found in .*pip install face_recognition_models"
    ):
        model_path(MMOD_DETECTOR)


def test_missing_model_dir_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        model_dir(tmp_path / "nope")


def test_truncated_and_corrupted_files_are_refused(tmp_path):
    source = model_path(MMOD_DETECTOR).read_bytes()
    (tmp_path / MMOD_DETECTOR.filename).write_bytes(source[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        model_path(MMOD_DETECTOR, tmp_path)
    corrupted = bytearray(source)
    corrupted[len(corrupted) // 2] ^= 0xFF
    (tmp_path / MMOD_DETECTOR.filename).write_bytes(bytes(corrupted))
    with pytest.raises(ModelFileError, match="SHA-256"):
        model_path(MMOD_DETECTOR, tmp_path)


@pytest.mark.parametrize(
    ("encoded", "value"),
    [(b"\x01\x00", 0), (b"\x01\x96", 150), (b"\x82\x2c\x01", -300)],
)
def test_integer_encoding(encoded, value):
    assert _Stream(encoded, "t").integer() == value


def test_float_encoding():
    assert _Stream(b"\x01\x00\x01\x28", "t").real() == 0.0
    assert np.float32(_Stream(b"\x03\x0a\xd7\xa3\x81\x1c", "t").real()) == np.float32(0.04)


def test_real_files_parse_to_the_expected_networks():
    resnet = load_network(model_path(FACE_RESNET))
    assert resnet.loss == "loss_metric_2" and resnet.input.size == (150, 150)
    assert len(resnet.layers) == 130 and resnet.kinds[-1] == "fc"
    assert resnet.layers[-1].weight.shape == (256, 128)
    mmod = load_network(model_path(MMOD_DETECTOR))
    assert mmod.loss == "loss_mmod_" and mmod.input.size is None
    assert mmod.loss_options["detector_width"] == 80
    assert abs(mmod.loss_options["nms_iou_threshold"] - 0.338) < 1e-3


@pytest.mark.parametrize("keep", [0, 1, 50, 5000, 0.5, 0.999])
def test_truncated_network_gives_a_clear_error(keep):
    data = model_path(MMOD_DETECTOR).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    with pytest.raises(ModelFileError, match="not a valid dlib model file"):
        parse_network(data[:cut], "cut.dat")


def test_trailing_bytes_and_foreign_files_are_refused(tmp_path):
    data = model_path(MMOD_DETECTOR).read_bytes()
    with pytest.raises(ModelFileError, match="unexpected bytes"):
        parse_network(data + b"\x00", "long.dat")
    with pytest.raises(ModelFileError, match="not a valid dlib model file"):
        parse_network(model_path(SHAPE_PREDICTOR_5).read_bytes(), "shape_predictor.dat")
    rng = np.random.default_rng(0)
    with pytest.raises(ModelFileError):
        parse_network(rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes(), "noise.dat")
    foreign = tmp_path / "foreign.dat"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ModelFileError):
        load_network(foreign)


def test_resnet_builder_refuses_another_network(tmp_path):
    path = tmp_path / "detector_as_resnet.dat"
    shutil.copy(model_path(MMOD_DETECTOR), path)
    with pytest.raises(ModelFileError, match="not the expected network"):
        load_face_resnet(path)
