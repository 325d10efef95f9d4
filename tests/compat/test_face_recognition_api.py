"""worker.compat.face_recognition against the original face_recognition package, on real faces.

The original (installed by the test extra, `install.sh --test`) runs dlib itself: its HOG boxes,
landmarks and encodings are the reference. Images are the wheel-shipped portraits and, when
../shared is present, its stills and LFW faces. dlib's CNN takes about a second per 250x250 image
on the 2-core CI machine, so the CNN comparisons use a few small images.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import dlib
import numpy as np
import PIL.Image
import pytest

import worker.compat.face_recognition as compat
from tests.realdata import has_shared_data, lfw_images, real_face_images
from worker.bench.peers import import_face_recognition
from worker.compat.face_recognition import api
from worker.embed.embedder import FaceEmbedder
from worker.errors import ImageError
from worker.samples import sample_paths

ENCODING_TOLERANCE = 1e-5  # the bound for num_jitters=1; measured about 4e-7
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def original() -> types.ModuleType:
    """face_recognition's own api module (dlib underneath)."""
    return import_face_recognition().api


@pytest.fixture(scope="module")
def images(original) -> dict[str, np.ndarray]:
    """Real photos, loaded by the original's loader: stills, 8 LFW faces and the portraits."""
    return {path.name: original.load_image_file(path) for path in real_face_images(lfw_people=8)}


@pytest.fixture(scope="module")
def small_images(original) -> list[np.ndarray]:
    """Images small enough for dlib's CNN: three LFW faces (250x250), else a crop of each portrait."""
    if has_shared_data():
        return [original.load_image_file(path) for path in lfw_images(3, offset=40)]
    portraits = [original.load_image_file(path) for path in sample_paths().values()]
    return [np.ascontiguousarray(image[:300, 100:400]) for image in portraits]


def assert_same_encodings(ours: list[np.ndarray], theirs: list[np.ndarray], what: str) -> None:
    assert isinstance(ours, list) and len(ours) == len(theirs), what
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.shape == (128,) and mine.dtype == np.float64, what
        diff = np.abs(mine - reference).max()
        assert diff <= ENCODING_TOLERANCE, f"{what}: max abs diff {diff}"


def test_same_public_names_and_signatures(original):
    """Every function of face_recognition's api has the same parameters and defaults here."""
    package = sys.modules["face_recognition"]
    for name in ("load_image_file", "face_locations", "batch_face_locations", "face_landmarks", "face_encodings"):
        assert name in dir(compat) and name in dir(package)
    for name, function in inspect.getmembers(original, inspect.isfunction):
        if function.__module__ != original.__name__:
            continue
        assert hasattr(api, name), f"api.{name} is missing"
        theirs = [(p.name, p.default) for p in inspect.signature(function).parameters.values()]
        ours = [(p.name, p.default) for p in inspect.signature(getattr(api, name)).parameters.values()]
        assert ours == theirs, name
    for name in ("face_recognition_cli", "face_detection_cli"):
        ours_module = __import__(f"worker.compat.face_recognition.{name}", fromlist=["main"])
        theirs_module = __import__(f"face_recognition.{name}", fromlist=["main"])
        assert ours_module.main.name == "main" and callable(ours_module.main)
        for helper, function in inspect.getmembers(theirs_module, inspect.isfunction):
            if function.__module__ != theirs_module.__name__:
                continue
            theirs = list(inspect.signature(function).parameters)
            ours = list(inspect.signature(getattr(ours_module, helper)).parameters)
            assert ours[: len(theirs)] == theirs, f"{name}.{helper}"
        assert [p.opts for p in ours_module.main.params] == [p.opts for p in theirs_module.main.params], name


def test_load_image_file_gives_the_same_pixels(original):
    for path in sample_paths().values():
        assert np.array_equal(api.load_image_file(path), original.load_image_file(path))
        gray = api.load_image_file(path, mode="L")
        assert gray.ndim == 2 and np.array_equal(gray, original.load_image_file(path, mode="L"))
        with open(path, "rb") as handle:
            from_object = api.load_image_file(io.BytesIO(handle.read()))
        assert np.array_equal(from_object, original.load_image_file(path))


@pytest.fixture(scope="module")
def hog_boxes(original, images) -> dict[str, list[tuple[int, int, int, int]]]:
    """The original's face_locations (HOG, upsampled once) of each image, found once for the module."""
    return {name: original.face_locations(image) for name, image in images.items()}


def small(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The images where a call that finds faces itself is cheap (the large stills are covered with boxes given)."""
    return {name: image for name, image in images.items() if image.size <= 600 * 600 * 3}


def test_hog_boxes_are_the_same(original, images, hog_boxes):
    for name, image in images.items():
        assert api.face_locations(image) == hog_boxes[name], name
        assert api.face_locations(image, 0) == original.face_locations(image, 0), f"{name} upsample 0"
    for name, image in small(images).items():
        raw = api._raw_face_locations(image)
        assert isinstance(raw, dlib.rectangles)
        assert list(raw) == list(original._raw_face_locations(image)), name
    assert sum(map(len, hog_boxes.values())) >= len(images)


def test_landmarks_are_the_same(original, images, hog_boxes):
    for name, image in images.items():
        locations = hog_boxes[name]
        for model in ("large", "small"):
            expected = original.face_landmarks(image, locations, model=model)
            assert api.face_landmarks(image, locations, model=model) == expected, f"{name} {model}"
        raw = api._raw_face_landmarks(image, locations, "small")
        assert all(isinstance(shape, dlib.full_object_detection) for shape in raw)
        assert [[(p.x, p.y) for p in s.parts()] for s in raw] == [
            [(p.x, p.y) for p in s.parts()] for s in original._raw_face_landmarks(image, locations, "small")
        ]
    for name, image in small(images).items():
        assert api.face_landmarks(image) == original.face_landmarks(image), f"{name}, boxes found by HOG"
    with pytest.raises(ValueError, match=r"Invalid landmarks model type\. Supported models are \['small', 'large'\]"):
        api.face_landmarks(next(iter(images.values())), model="medium")


def test_encodings_match_the_original(original, images, hog_boxes):
    for name, image in images.items():
        for model in ("small", "large"):
            assert_same_encodings(
                api.face_encodings(image, hog_boxes[name], model=model),
                original.face_encodings(image, hog_boxes[name], model=model),
                f"{name} {model} with known locations",
            )
    for name, image in small(images).items():
        assert_same_encodings(api.face_encodings(image), original.face_encodings(image), f"{name}, boxes found by HOG")


def test_many_faces_are_encoded_in_one_forward_pass(original, images, monkeypatch):
    """A mosaic of every test face: one call of the torch embedder, the original's encodings."""
    tiles = [np.ascontiguousarray(image[:250, :250]) for image in images.values() if image.shape[0] >= 250]
    tiles = [tile for tile in tiles if original.face_locations(tile)][:8]
    assert len(tiles) >= 2
    mosaic = np.concatenate(tiles, axis=1)
    calls = []
    real_embed = FaceEmbedder.embed

    def counting_embed(self, chips, flip_average=False):
        calls.append(len(chips))
        return real_embed(self, chips, flip_average)

    monkeypatch.setattr(FaceEmbedder, "embed", counting_embed)
    ours = api.face_encodings(mosaic)
    expected = original.face_encodings(mosaic)
    assert len(expected) >= len(tiles)
    assert_same_encodings(ours, expected, "mosaic")
    assert calls == [len(expected)]


def test_batch_face_encodings_equal_one_image_at_a_time(images):
    chosen = list(images.values())[:4]
    batched = compat.batch_face_encodings(chosen)
    for image, encodings in zip(chosen, batched, strict=True):
        assert_same_encodings(encodings, api.face_encodings(image), "batched")
    with pytest.raises(ValueError, match="2 lists of face locations for 4 images"):
        compat.batch_face_encodings(chosen, [[], []])


def test_cnn_boxes_are_the_same(original, small_images):
    for index, image in enumerate(small_images[:2]):
        expected = original.face_locations(image, 1, model="cnn")
        assert expected, f"image {index}: the reference found no face"
        assert api.face_locations(image, 1, model="cnn") == expected, f"image {index}"
        raw, reference = api._raw_face_locations(image, 1, "cnn"), original._raw_face_locations(image, 1, "cnn")
        assert [face.rect for face in raw] == [face.rect for face in reference]
        assert all(abs(a.confidence - b.confidence) < 1e-3 for a, b in zip(raw, reference, strict=True))


def test_faces_cut_by_the_edges_are_trimmed_as_face_recognition_trims_them(original):
    """Right and bottom are limited to the width and height themselves (face_recognition's rule), left and top to 0."""
    hopper = original.load_image_file(sample_paths()["Grace Hopper"])
    crops = [hopper[60:400, :340], hopper[60:400, 200:], hopper[170:, 100:450], hopper[:300, 100:450]]
    crossed = set()
    for crop in map(np.ascontiguousarray, crops):
        for model, upsample in (("hog", 1), ("cnn", 0)):
            expected = original.face_locations(crop, upsample, model)
            assert api.face_locations(crop, upsample, model) == expected, model
            raw = [r if model == "hog" else r.rect for r in original._raw_face_locations(crop, upsample, model)]
            height, width = crop.shape[:2]
            for rect in raw:
                crossed |= {
                    side
                    for side, out in zip(
                        "trbl",
                        (rect.top() < 0, rect.right() >= width, rect.bottom() >= height, rect.left() < 0),
                        strict=True,
                    )
                    if out
                }
        assert_same_encodings(api.face_encodings(crop), original.face_encodings(crop), "face at the edge")
    assert crossed == set("trbl"), "the crops no longer put faces across every edge"


def test_batch_face_locations_are_the_same(original, small_images):
    expected = original.batch_face_locations(small_images, 0, batch_size=2)
    assert sum(map(len, expected)) >= len(small_images)
    assert api.batch_face_locations(small_images, 0, batch_size=2) == expected
    assert api.batch_face_locations(small_images, 0) == expected
    assert api.batch_face_locations([*small_images[:1], small_images[1][:200, :220]], 0)[0] == expected[0]
    assert [list(map(api._rect_to_css, (f.rect for f in faces))) for faces in api.cnn_face_detector(small_images)] == [
        list(map(api._rect_to_css, (f.rect for f in faces))) for faces in original.cnn_face_detector(small_images)
    ]


def test_distances_and_comparisons_are_the_same(original, images, hog_boxes):
    encodings = [e for name, image in images.items() for e in original.face_encodings(image, hog_boxes[name])]
    probe = encodings[0]
    assert np.array_equal(api.face_distance(encodings, probe), original.face_distance(encodings, probe))
    assert np.array_equal(api.face_distance(np.array(encodings), probe), original.face_distance(encodings, probe))
    for tolerance in (0.4, 0.6):
        assert api.compare_faces(encodings, probe, tolerance) == original.compare_faces(encodings, probe, tolerance)
    assert api.face_distance([], probe).shape == (0,) and api.compare_faces([], probe) == []


def test_module_level_models_act_like_the_originals(original, images):
    image = next(iter(images.values()))
    assert isinstance(api.face_detector, dlib.fhog_object_detector)
    assert list(api.face_detector(image, 1)) == list(original.face_detector(image, 1))
    assert isinstance(api.pose_predictor_5_point, dlib.shape_predictor)
    assert isinstance(api.pose_predictor_68_point, dlib.shape_predictor)
    shapes = original._raw_face_landmarks(image, model="small")
    ours = np.array(api.face_encoder.compute_face_descriptor(image, shapes[0], 1))
    assert np.abs(ours - np.array(original.face_encoder.compute_face_descriptor(image, shapes[0], 1))).max() <= 1e-5
    with pytest.raises(AttributeError, match="no attribute 'no_such_model'"):
        _ = api.no_such_model


def test_inputs_dlib_refuses_are_taken_and_bad_ones_named(images):
    image = next(iter(images.values()))
    expected = api.face_encodings(image)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    assert_same_encodings(api.face_encodings(bgr[:, :, ::-1]), expected, "non-contiguous view")
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], axis=2)
    assert api.face_locations(rgba) == api.face_locations(image)
    gray = np.ascontiguousarray(image.mean(axis=2).astype(np.uint8))
    assert len(api.face_encodings(gray)) == len(api.face_locations(gray))
    with pytest.raises(ImageError, match="unsupported pixel layout"):
        api.face_locations(np.zeros(100, np.uint8))
    with pytest.raises(ImageError, match="PIL image"):
        api.face_locations(PIL.Image.new("RGB", (10, 10)))


JITTER_SCRIPT = """
import json, sys
import numpy as np
from worker.bench.peers import import_face_recognition
from worker.compat.face_recognition import api
original = import_face_recognition().api
image = original.load_image_file(sys.argv[1])
# both start from dlib's fixed seed in a fresh process; the same calls draw the same jitters
theirs = [original.face_encodings(image, num_jitters=n) for n in (3, 2)]
ours = [api.face_encodings(image, num_jitters=n) for n in (3, 2)]
plain = api.face_encodings(image)
print(json.dumps({
    "diff": max(float(np.abs(a - b).max()) for x, y in zip(ours, theirs) for a, b in zip(x, y)),
    "faces": [len(x) for x in ours],
    "moved": min(float(np.abs(a - b).max()) for a, b in zip(ours[0], plain)),
}))
"""


def test_jittered_encodings_follow_the_same_random_draws():
    """In a fresh process (dlib's generators start from their seed), jittered encodings equal the original's."""
    portrait = sample_paths()["Eileen Collins"]  # two faces: the draws go face by face
    done = subprocess.run(
        [sys.executable, "-c", JITTER_SCRIPT, str(portrait)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["faces"] == [2, 2]
    assert result["moved"] > 1e-3, "jitter changed nothing: the comparison would prove nothing"
    assert result["diff"] <= ENCODING_TOLERANCE, result
