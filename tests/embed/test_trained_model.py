"""A trained nn4.small2 as the embedder (`embedder.model`): its chips, its model_version, its thresholds.

The weights are nn4.small2's random initialisation, saved the way `facewatch train --out` saves a model;
what is tested here does not depend on them being trained (docs/accuracy.md measures a trained one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.config import Settings
from worker.embed.embedder import FaceEmbedder
from worker.errors import ModelFileError
from worker.models.face_spec import DLIB_CHIP, MODEL_VERSION, OPENFACE_CHIP
from worker.models.nn4_small2 import Nn4Small2
from worker.recognition import FaceRecognizer
from worker.samples import sample_paths
from worker.vision.align import openface_chips
from worker.vision.image import load_image


def save_random_nn4(path: Path, seed: int = 0) -> Path:
    """nn4.small2 with seeded random weights, as a state dict (what `facewatch train --out` writes)."""
    torch.manual_seed(seed)
    torch.save(Nn4Small2().eval().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def nn4_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_nn4(tmp_path_factory.mktemp("nn4") / "nn4.pt")


def trained_settings(model: Path, **sections: dict) -> Settings:
    """Settings with ``embedder.model`` set and the thresholds it requires."""
    return Settings(
        embedder={"model": str(model), "device": "cpu"},
        watchlist={"match_threshold": 0.3, "unknown_threshold": 0.4},
        **sections,
    )


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return load_image(sample_paths()["Grace Hopper"])


def test_the_embedder_reads_openface_chips_under_a_version_of_its_weights(nn4_file, tmp_path):
    embedder = FaceEmbedder(device="cpu", model=str(nn4_file))
    assert embedder.chip == OPENFACE_CHIP and embedder.distance_threshold is None
    assert embedder.model_version.startswith("nn4.small2-") and embedder.model_version != MODEL_VERSION
    chips = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    vectors = embedder.embed(chips)
    assert vectors.shape == (3, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batch norms are folded for speed: the same function as the model as saved.
    torch.manual_seed(0)
    reference = Nn4Small2().eval()
    reference.load_state_dict(torch.load(nn4_file, weights_only=True))
    np.testing.assert_allclose(vectors, reference.embed(chips), atol=1e-4)
    with pytest.raises(ValueError, match="96, 96, 3"):
        embedder.embed(np.zeros((1, 150, 150, 3), np.uint8))

    # The version names the weights, not the file: a training checkpoint holding them gives the same one,
    # other weights another.
    checkpoint = tmp_path / "run.pt.ckpt"
    torch.save({"format": 1, "step": 600, "model": torch.load(nn4_file, weights_only=True)}, checkpoint)
    assert FaceEmbedder(device="cpu", model=str(checkpoint)).model_version == embedder.model_version
    other = save_random_nn4(tmp_path / "other.pt", seed=1)
    assert FaceEmbedder(device="cpu", model=str(other)).model_version != embedder.model_version


def test_a_trained_model_runs_in_bf16_close_to_fp32(nn4_file, portrait):
    """Regression: torch's CPU local response norm has no bfloat16 kernel, so nn4.small2 failed at its first
    batch with precision bf16 (or auto on a CPU with AMX); it runs that step in float32 now."""
    from worker.runtime.device import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): bf16 is refused on it")
    [faces] = FaceRecognizer(trained_settings(nn4_file)).analyze([portrait])
    low = FaceEmbedder(device="cpu", precision="bf16", model=str(nn4_file))
    assert low.precision == "bf16" and low.network.fc.weight.dtype == torch.bfloat16
    drift = np.linalg.norm(low.embed(faces.chips) - faces.embeddings, axis=1)
    assert 0 < drift.max() < 0.05, drift  # it ran in bf16, and near fp32


def test_a_model_file_that_is_not_nn4_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        FaceEmbedder(device="cpu", model=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="cannot read"):
        FaceEmbedder(device="cpu", model=str(junk))
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ModelFileError, match=r"not an nn4\.small2 state dict"):
        FaceEmbedder(device="cpu", model=str(other))


def test_the_recognizer_cuts_the_chips_the_model_reads(nn4_file, portrait):
    default = FaceRecognizer(Settings())
    assert default.chip == DLIB_CHIP
    recognizer = FaceRecognizer(trained_settings(nn4_file))
    assert recognizer.chip == OPENFACE_CHIP  # known before the weights load
    [faces] = recognizer.analyze([portrait])
    assert len(faces.boxes) >= 1 and faces.chips.shape == (len(faces.boxes), 96, 96, 3)
    assert faces.landmarks.shape[1:] == (5, 2)  # dlib's layout, from RetinaFace's points (the default)
    np.testing.assert_array_equal(faces.chips, openface_chips(portrait, faces.landmarks))
    assert faces.embeddings.shape == (len(faces.boxes), 128)

    # With the 68-point model fitted, the chips are OpenFace's own (outer eyes and nose of the 68).
    fitted = FaceRecognizer(trained_settings(nn4_file, landmarks={"points": 68, "alignment": "shape_predictor"}))
    landmarks, chips = fitted.align(portrait, faces.boxes[:1])
    assert landmarks.shape == (1, 68, 2)
    np.testing.assert_array_equal(chips, openface_chips(portrait, landmarks))
    # The two landmark sources put the face in nearly the same place.
    assert np.abs(chips.astype(int) - faces.chips[:1].astype(int)).mean() < 40


def test_a_trained_model_needs_its_own_thresholds():
    with pytest.raises(ValueError, match=r"set watchlist\.match_threshold, watchlist\.unknown_threshold"):
        Settings(embedder={"model": "m.pt"})
    with pytest.raises(ValueError, match="unknown_threshold"):
        Settings(embedder={"model": "m.pt"}, watchlist={"match_threshold": 0.3})
    with pytest.raises(ValueError, match="match_fmr reads dlib's FMR table"):
        Settings(embedder={"model": "m.pt"}, watchlist={"match_fmr": 1e-4, "unknown_threshold": 0.6})
    visitor_keys = r"visitors\.threshold, visitors\.merge_threshold, visitors\.opt_out_threshold"
    with pytest.raises(ValueError, match=visitor_keys):
        Settings(
            embedder={"model": "m.pt"},
            watchlist={"match_threshold": 0.3, "unknown_threshold": 0.4},
            visitors={"enabled": True},
        )
    settings = Settings(
        embedder={"model": "m.pt"},
        watchlist={"match_threshold": 0.3, "unknown_threshold": 0.4},
        visitors={"enabled": True, "threshold": 0.2, "merge_threshold": 0.15, "opt_out_threshold": 0.3},
    )
    assert settings.watchlist.match_distance == 0.3
    Settings(watchlist={"match_fmr": 1e-4})  # dlib's ResNet keeps its table and defaults
