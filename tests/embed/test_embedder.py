"""The torch face ResNet against dlib itself, on chips of real faces."""

from __future__ import annotations

import cv2
import dlib
import numpy as np
import pytest
import torch

from tests.realdata import hog_faces
from worker.embed.embedder import FaceEmbedder
from worker.models.files import FACE_RESNET, SHAPE_PREDICTOR_68, model_path
from worker.vision.align import DLIB5_OF_68, OPENFACE_TEMPLATE, OUTER_EYES_AND_NOSE, dlib_chips, openface_chips


@pytest.fixture(scope="module")
def faces():
    """(image, dlib shapes) for every real test image with at least one HOG face."""
    return hog_faces(lfw_people=30)


@pytest.fixture(scope="module")
def chips(faces):
    return np.concatenate([dlib_chips(image, shapes) for image, shapes in faces])


def test_chips_are_dlibs(faces):
    for image, shapes in faces:
        ours = dlib_chips(image, shapes)
        for i, shape in enumerate(shapes):
            assert np.array_equal(ours[i], dlib.get_face_chip(image, shape, 150, 0.25))


def test_descriptors_match_dlib(chips):
    reference = dlib.face_recognition_model_v1(str(model_path(FACE_RESNET)))
    expected = np.array(reference.compute_face_descriptor(list(chips)), dtype=np.float64)
    ours = FaceEmbedder(device="cpu").embed(chips)
    assert ours.shape == (len(chips), 128) and ours.dtype == np.float32
    diff = np.abs(ours - expected).max()
    assert diff <= 1e-5, f"max abs diff {diff} over {len(chips)} faces"


def test_batch_size_does_not_change_descriptors(chips):
    batched = FaceEmbedder(device="cpu", max_batch=64).embed(chips)
    one_by_one = FaceEmbedder(device="cpu", max_batch=1).embed(chips)
    assert np.abs(batched - one_by_one).max() <= 1e-5


def test_embedder_rejects_wrong_input():
    embedder = FaceEmbedder(device="cpu")
    assert embedder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="150, 150, 3"):
        embedder.embed(np.zeros((1, 96, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((1, 150, 150, 3), np.float32))


def test_openface_alignment_puts_landmarks_on_the_template(faces):
    predictor = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))
    image, shapes = faces[0]
    shape = predictor(image, shapes[0].rect)
    landmarks = np.array([[(p.x, p.y) for p in shape.parts()]], np.float32)
    chip = openface_chips(image, landmarks)
    assert chip.shape == (1, 96, 96, 3) and chip.any()
    indices = list(OUTER_EYES_AND_NOSE)
    matrix = cv2.getAffineTransform(landmarks[0, indices], (96 * OPENFACE_TEMPLATE[indices]).astype(np.float32))
    moved = cv2.transform(landmarks[:, indices], matrix)[0]
    assert np.abs(moved - 96 * OPENFACE_TEMPLATE[indices]).max() < 1e-3
    # The other eye and mouth landmarks land near (not on) the template: a sanity check on orientation.
    all_moved = cv2.transform(landmarks, matrix)[0]
    assert np.abs(all_moved - 96 * OPENFACE_TEMPLATE).mean() < 6.0
    # dlib's 5-point layout holds the same outer eye corners and nose base: the same chip.
    assert np.array_equal(openface_chips(image, landmarks[:, list(DLIB5_OF_68)]), chip)
    with pytest.raises(ValueError, match="68- or dlib's 5-point"):
        openface_chips(image, landmarks[:, :7])
    with pytest.raises(ValueError, match="hold none"):
        openface_chips(image, landmarks[:, list(DLIB5_OF_68)], indices=(36, 45, 30))


def test_bf16_descriptors_stay_close_to_fp32(chips):
    """bf16 (AMX / AVX-512 BF16) moved these faces' descriptors by at most 0.015 and their pair distances
    by at most 0.0046; over LFW's 6000 pairs and the open-set probes the largest distance change was
    0.0038 (docs/benchmarks.md, 'bf16 on the CPU's matrix units'). The bounds give those about 2x headroom."""
    from worker.runtime.device import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): bf16 is refused on it")
    fp32 = FaceEmbedder(device="cpu").embed(chips)
    embedder = FaceEmbedder(device="cpu", precision="bf16")
    assert embedder.precision == "bf16" and embedder.network.fc.weight.dtype == torch.bfloat16
    ours = embedder.embed(chips)
    assert ours.dtype == np.float32 and ours.shape == fp32.shape
    drift = np.linalg.norm(ours - fp32, axis=1)
    assert drift.max() > 0  # it really ran in bf16
    assert drift.max() <= 0.03, f"descriptor moved {drift.max():.4f}"
    i, j = np.triu_indices(len(chips), 1)
    change = np.abs(np.linalg.norm(ours[i] - ours[j], axis=1) - np.linalg.norm(fp32[i] - fp32[j], axis=1))
    assert change.max() <= 0.01, f"a pair distance moved {change.max():.4f}"
    # The exact path of a bf16 embedder is fp32's, to the bit.
    assert np.array_equal(embedder.embed_exact(chips), fp32)


def test_auto_lowers_only_the_search(chips):
    """auto on a bf16 CPU: templates and comparisons (embed) stay fp32 to the bit; the worker's search runs
    the same bf16 network an explicit bf16 embedder runs."""
    from worker.runtime.device import cpu_has_bf16

    embedder = FaceEmbedder(device="cpu", precision="auto")
    fp32 = FaceEmbedder(device="cpu").embed(chips)
    assert embedder.precision == "fp32" and np.array_equal(embedder.embed(chips), fp32)
    assert np.array_equal(embedder.embed_exact(chips), fp32)
    if not cpu_has_bf16():
        assert embedder.search_precision == "fp32" and not embedder.lowered
        assert np.array_equal(embedder.embed_search(chips), fp32)
        return
    assert embedder.search_precision == "bf16" and embedder.lowered
    searched = embedder.embed_search(chips)
    assert not np.array_equal(searched, fp32)
    assert np.allclose(searched, FaceEmbedder(device="cpu", precision="bf16").embed(chips), atol=1e-6)
