"""face_recognition's ``api`` module: the same functions, arguments, defaults and results.

What runs underneath: HOG boxes and the landmarks come from dlib itself, as in face_recognition;
CNN boxes come from facewatch's torch port of dlib's MMOD detector (the same boxes) and encodings
from its torch port of dlib's face ResNet (within 1e-5 of dlib's), on the GPU when there is one.
All faces of an image are encoded in one forward pass, and ``batch_face_locations`` runs images of
one size through the CNN together. ``batch_face_encodings`` (not in face_recognition) encodes the
faces of many images in one pass.

Differences a caller can see: models load on first use, not at import; the CNN detector's
``mmod_rectangle`` objects are ``MmodRectangle`` (the same ``rect`` and ``confidence``
attributes, in a plain list); non-contiguous arrays (``frame[:, :, ::-1]``), RGBA and 16-bit
images are accepted where dlib refuses them; and ``batch_face_locations`` takes images of mixed
sizes (each box trimmed to its own image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import IO, Any

import dlib
import numpy as np
import PIL.Image
from PIL import ImageFile

from worker.compat.face_recognition.models import face_chips, face_models
from worker.errors import ImageError
from worker.models.face_spec import CHIP_SIZE
from worker.vision.boxes import Box
from worker.vision.image import to_rgb8

# face_recognition sets this when imported, so truncated JPEGs load; its users' files may rely on it.
ImageFile.LOAD_TRUNCATED_IMAGES = True

Css = tuple[int, int, int, int]  # (top, right, bottom, left), face_recognition's box order
BATCH_SIZE = 128  # face_recognition's default batch_size for batch_face_locations


class MmodRectangle:
    """A CNN detection: ``rect`` (dlib.rectangle) and ``confidence``, as dlib's mmod_rectangle has.

    dlib's own type cannot be built from Python, hence this stand-in with the same attributes.
    """

    __slots__ = ("confidence", "rect")

    def __init__(self, rect: dlib.rectangle, confidence: float) -> None:
        self.rect = rect
        self.confidence = confidence

    def __repr__(self) -> str:
        return f"MmodRectangle(rect={self.rect}, confidence={self.confidence:.4f})"


def _pixels(img: Any) -> np.ndarray:
    """The image as dlib takes it: contiguous uint8, gray H x W or RGB H x W x 3.

    Arrays dlib already takes pass through unchanged (same results as face_recognition); other
    layouts (RGBA, H x W x 1, 16-bit, float) are converted as facewatch's image loader converts them.
    """
    if not isinstance(img, np.ndarray):
        if isinstance(img, PIL.Image.Image):
            raise ImageError("expected a numpy array, got a PIL image: pass np.array(image) or use load_image_file")
        img = np.asarray(img)
    if img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) and img.size:
        return np.ascontiguousarray(img)
    return to_rgb8(img, name="image")


def _rect_to_css(rect: dlib.rectangle) -> Css:
    """A dlib rectangle as a (top, right, bottom, left) tuple."""
    return rect.top(), rect.right(), rect.bottom(), rect.left()


def _css_to_rect(css: Sequence[int]) -> dlib.rectangle:
    """A (top, right, bottom, left) tuple as a dlib rectangle."""
    return dlib.rectangle(int(css[3]), int(css[0]), int(css[1]), int(css[2]))


def _trim_css_to_bounds(css: Css, image_shape: tuple[int, ...]) -> Css:
    """The box limited to the image, exactly as face_recognition limits it (right and bottom to the size)."""
    return max(css[0], 0), min(css[1], image_shape[1]), min(css[2], image_shape[0]), max(css[3], 0)


def _box_to_rect(box: Box) -> dlib.rectangle:
    return dlib.rectangle(box.left, box.top, box.right, box.bottom)


def face_distance(face_encodings: Any, face_to_compare: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of ``face_encodings`` to ``face_to_compare`` (same person below ~0.6)."""
    if len(face_encodings) == 0:
        return np.empty(0)
    return np.linalg.norm(face_encodings - face_to_compare, axis=1)


def load_image_file(file: str | IO[bytes], mode: str = "RGB") -> np.ndarray:
    """An image file (name or file object) as a numpy array, decoded by Pillow as face_recognition does.

    ``mode``: 'RGB' (H x W x 3) or 'L' (gray, H x W); a false value keeps the file's own mode.
    """
    im = PIL.Image.open(file)
    if mode:
        im = im.convert(mode)
    return np.array(im)


def _raw_face_locations(
    img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog"
) -> dlib.rectangles | list[MmodRectangle]:
    """dlib rectangles of the faces (model 'hog'), or MmodRectangles (model 'cnn'), best first."""
    pixels = _pixels(img)
    if model == "cnn":
        found = face_models().mmod(number_of_times_to_upsample).detect(pixels)
        return [MmodRectangle(_box_to_rect(box), box.score) for box in found]
    found = face_models().hog(number_of_times_to_upsample).detect(pixels)
    return dlib.rectangles([_box_to_rect(box) for box in found])


def face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1, model: str = "hog") -> list[Css]:
    """Face boxes as (top, right, bottom, left) tuples, trimmed to the image.

    ``model``: 'hog' (dlib's HOG detector, CPU) or 'cnn' (dlib's CNN detector, here in torch: the
    same boxes, many times faster, GPU-capable). Upsampling finds smaller faces.
    """
    pixels = _pixels(img)
    if model == "cnn":
        found = _raw_face_locations(pixels, number_of_times_to_upsample, "cnn")
        return [_trim_css_to_bounds(_rect_to_css(face.rect), pixels.shape) for face in found]
    found = _raw_face_locations(pixels, number_of_times_to_upsample, model)
    return [_trim_css_to_bounds(_rect_to_css(face), pixels.shape) for face in found]


def _raw_face_locations_batched(
    images: Iterable[np.ndarray], number_of_times_to_upsample: int = 1, batch_size: int = BATCH_SIZE
) -> list[list[MmodRectangle]]:
    """MmodRectangles per image from the CNN detector, up to ``batch_size`` images per call."""
    pixels = [_pixels(image) for image in images]
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    detector = face_models().mmod(number_of_times_to_upsample)
    results: list[list[MmodRectangle]] = []
    for start in range(0, len(pixels), batch_size):
        for boxes in detector.detect_batch(pixels[start : start + batch_size]):
            results.append([MmodRectangle(_box_to_rect(box), box.score) for box in boxes])
    return results


def batch_face_locations(
    images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1, batch_size: int = BATCH_SIZE
) -> list[list[Css]]:
    """CNN face boxes for each image, as face_locations(image, model='cnn') gives them, batched.

    Images of one size share forward passes (on CPU too, where face_recognition's version gains
    nothing); images of mixed sizes are accepted.
    """
    images = list(images)
    found = _raw_face_locations_batched(images, number_of_times_to_upsample, batch_size)
    return [
        [_trim_css_to_bounds(_rect_to_css(face.rect), image.shape) for face in faces]
        for image, faces in zip(images, found, strict=True)
    ]


def _raw_face_landmarks(
    face_image: np.ndarray, face_locations: Iterable[Sequence[int]] | None = None, model: str = "large"
) -> list[dlib.full_object_detection]:
    """dlib shapes (68 points; 5 with model 'small') for the given boxes, or for the HOG boxes found."""
    pixels = _pixels(face_image)
    if face_locations is None:
        rects = list(_raw_face_locations(pixels))
    else:
        rects = [_css_to_rect(location) for location in face_locations]
    predictor = face_models().landmarks(5 if model == "small" else 68)
    boxes = [Box(rect.left(), rect.top(), rect.right(), rect.bottom()) for rect in rects]
    return list(predictor.shapes(pixels, boxes))


def face_landmarks(
    face_image: np.ndarray, face_locations: Iterable[Sequence[int]] | None = None, model: str = "large"
) -> list[dict[str, list[tuple[int, int]]]]:
    """A dict of named point lists per face: 'large' (68 points; dlib's model is licensed for
    non-commercial use only) or 'small' (5 points)."""
    if model not in ("large", "small"):
        raise ValueError("Invalid landmarks model type. Supported models are ['small', 'large'].")
    landmarks = _raw_face_landmarks(face_image, face_locations, model)
    landmarks_as_tuples = [[(p.x, p.y) for p in landmark.parts()] for landmark in landmarks]
    if model == "large":
        return [
            {
                "chin": points[0:17],
                "left_eyebrow": points[17:22],
                "right_eyebrow": points[22:27],
                "nose_bridge": points[27:31],
                "nose_tip": points[31:36],
                "left_eye": points[36:42],
                "right_eye": points[42:48],
                "top_lip": [*points[48:55], points[64], points[63], points[62], points[61], points[60]],
                "bottom_lip": [*points[54:60], points[48], points[60], points[67], points[66], points[65], points[64]],
            }
            for points in landmarks_as_tuples
        ]
    return [
        {"nose_tip": [points[4]], "left_eye": points[2:4], "right_eye": points[0:2]} for points in landmarks_as_tuples
    ]


def face_encodings(
    face_image: np.ndarray,
    known_face_locations: Iterable[Sequence[int]] | None = None,
    num_jitters: int = 1,
    model: str = "small",
) -> list[np.ndarray]:
    """The 128-d encoding (float64 array) of each face, all faces in one forward pass.

    ``known_face_locations``: (top, right, bottom, left) boxes, else HOG finds them. ``num_jitters``:
    average over that many random variations of each face (dlib's procedure and generator).
    ``model``: the landmarks that align the face, 'small' (5 points) or 'large' (68).
    """
    return batch_face_encodings(
        [face_image], None if known_face_locations is None else [known_face_locations], num_jitters, model
    )[0]


def batch_face_encodings(
    images: Sequence[np.ndarray],
    known_face_locations: Sequence[Iterable[Sequence[int]] | None] | None = None,
    num_jitters: int = 1,
    model: str = "small",
) -> list[list[np.ndarray]]:
    """face_encodings for each image, with the faces of all images in one batched forward pass.

    Not in face_recognition: facewatch's addition for folders of photos and runs of frames.
    """
    if known_face_locations is not None and len(known_face_locations) != len(images):
        raise ValueError(f"{len(known_face_locations)} lists of face locations for {len(images)} images")
    chips, counts = [], []
    for index, image in enumerate(images):
        pixels = _pixels(image)
        locations = None if known_face_locations is None else known_face_locations[index]
        shapes = _raw_face_landmarks(pixels, locations, model)
        chips.append(face_chips(pixels, shapes))
        counts.append(len(shapes))
    all_chips = np.concatenate(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    descriptors = face_models().encode(all_chips, num_jitters)
    results, start = [], 0
    for count in counts:
        results.append([row.astype(np.float64) for row in descriptors[start : start + count]])
        start += count
    return results


def compare_faces(known_face_encodings: Any, face_encoding_to_check: np.ndarray, tolerance: float = 0.6) -> list[bool]:
    """For each known encoding, whether it is within ``tolerance`` of the one to check (0.6: dlib's threshold)."""
    return list(face_distance(known_face_encodings, face_encoding_to_check) <= tolerance)


class CnnFaceDetector:
    """Called like dlib's cnn_face_detection_model_v1: one image, or a list of images with a batch size."""

    def __call__(
        self, img: np.ndarray | list[np.ndarray], upsample_num_times: int = 0, batch_size: int = BATCH_SIZE
    ) -> list[MmodRectangle] | list[list[MmodRectangle]]:
        if isinstance(img, list):
            return _raw_face_locations_batched(img, upsample_num_times, batch_size)
        return _raw_face_locations(img, upsample_num_times, "cnn")  # type: ignore[return-value]


class FaceEncoder:
    """Called like dlib's face_recognition_model_v1 for faces in an image, on the torch network."""

    def compute_face_descriptor(
        self,
        img: np.ndarray,
        face: dlib.full_object_detection | Iterable[dlib.full_object_detection],
        num_jitters: int = 0,
        padding: float = 0.25,
    ) -> dlib.vector | list[dlib.vector]:
        """One descriptor for one shape; a list of them for several."""
        single = isinstance(face, dlib.full_object_detection)
        shapes = [face] if single else list(face)
        descriptors = face_models().encode(face_chips(_pixels(img), shapes, padding), num_jitters)
        vectors = [dlib.vector(row.astype(np.float64).tolist()) for row in descriptors]
        return vectors[0] if single else vectors


_LAZY = {
    "face_detector": lambda: face_models().hog(1).dlib_detector(),
    "pose_predictor_68_point": lambda: face_models().landmarks(68).predictor,
    "pose_predictor_5_point": lambda: face_models().landmarks(5).predictor,
    "cnn_face_detector": CnnFaceDetector,
    "face_encoder": FaceEncoder,
}


def __getattr__(name: str) -> Any:
    """face_recognition's module-level models, built when first asked for (not at import)."""
    if name in _LAZY:
        return _LAZY[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
