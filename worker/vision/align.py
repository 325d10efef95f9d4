"""Cutting aligned face chips for the embedding networks.

- dlib's chips (150x150, padding 0.25) for the face ResNet, cut by dlib itself so they are
  identical to ``dlib.get_face_chip``.
- The same chips from a detector's own five landmarks (retinaface): a least-squares similarity
  transform onto where those points sit in dlib's chip (DETECTOR_TEMPLATE), then a warp that
  downsamples large faces through a pyramid as dlib does.
- OpenFace's 96x96 affine alignment: three landmarks mapped onto OpenFace's mean face
  template with cv2.getAffineTransform (needs the 68-point model).
"""

from __future__ import annotations

from typing import Final

import cv2
import dlib
import numpy as np

from worker.models.face_spec import CHIP_PADDING, CHIP_SIZE

# OpenFace's mean landmark positions (68 points, x and y), as published with OpenFace's align_dlib.
_OPENFACE_TEMPLATE = np.float32(
    [
        (0.0792396913815, 0.339223741112),
        (0.0829219487236, 0.456955367943),
        (0.0967927109165, 0.575648016728),
        (0.122141515615, 0.691921601066),
        (0.168687863544, 0.800341263616),
        (0.239789390707, 0.895732504778),
        (0.325662452515, 0.977068762493),
        (0.422318282013, 1.04329000149),
        (0.531777802068, 1.06080371126),
        (0.641296298053, 1.03981924107),
        (0.738105872266, 0.972268833998),
        (0.824444363295, 0.889624082279),
        (0.894792677532, 0.792494155836),
        (0.939395486253, 0.681546643421),
        (0.96111933829, 0.562238253072),
        (0.970579841181, 0.441758925744),
        (0.971193274221, 0.322118743967),
        (0.163846223133, 0.249151738053),
        (0.21780354657, 0.204255863861),
        (0.291299351124, 0.192367318323),
        (0.367460241458, 0.203582210627),
        (0.4392945113, 0.233135599851),
        (0.586445962425, 0.228141644834),
        (0.660152671635, 0.195923841854),
        (0.737466449096, 0.182360984545),
        (0.813236546239, 0.192828009114),
        (0.8707571886, 0.235293377042),
        (0.51534533827, 0.31863546193),
        (0.516221448289, 0.396200446263),
        (0.517118861835, 0.473797687758),
        (0.51816430343, 0.553157797772),
        (0.433701156035, 0.604054457668),
        (0.475501237769, 0.62076344024),
        (0.520712933176, 0.634268222208),
        (0.565874114041, 0.618796581487),
        (0.607054002672, 0.60157671656),
        (0.252418718401, 0.331052263829),
        (0.298663015648, 0.302646354002),
        (0.355749724218, 0.303020650651),
        (0.403718978315, 0.33867711083),
        (0.352507175597, 0.349987615384),
        (0.296791759886, 0.350478978225),
        (0.631326076346, 0.334136672344),
        (0.679073381078, 0.29645404267),
        (0.73597236153, 0.294721285802),
        (0.782865376271, 0.321305281656),
        (0.740312274764, 0.341849376713),
        (0.68499850091, 0.343734332172),
        (0.353167761422, 0.746189164237),
        (0.414587777921, 0.719053835073),
        (0.477677654595, 0.706835892494),
        (0.522732900812, 0.717092275768),
        (0.569832064287, 0.705414478982),
        (0.635195811927, 0.71565572516),
        (0.69951672331, 0.739419187253),
        (0.639447159575, 0.805236879972),
        (0.576410514055, 0.835436670169),
        (0.525398405766, 0.841706377792),
        (0.47641545769, 0.837505914975),
        (0.41379548902, 0.810045601727),
        (0.380084785646, 0.749979603086),
        (0.477955996282, 0.74513234612),
        (0.523389793327, 0.748924302636),
        (0.571057789237, 0.74332894691),
        (0.672409137852, 0.744177032192),
        (0.572539621444, 0.776609286626),
        (0.5240106503, 0.783370783245),
        (0.477561227414, 0.778476346951),
    ]
)
# OpenFace normalises the template to the unit square before scaling it to the chip size.
OPENFACE_TEMPLATE: Final = (_OPENFACE_TEMPLATE - _OPENFACE_TEMPLATE.min(axis=0)) / np.ptp(_OPENFACE_TEMPLATE, axis=0)
OUTER_EYES_AND_NOSE: Final = (36, 45, 33)
INNER_EYES_AND_BOTTOM_LIP: Final = (39, 42, 57)
OPENFACE_SIZE: Final = 96

# Where the detector's five points (worker.vision.boxes.LANDMARK_NAMES: right eye, left eye, nose,
# right and left mouth corners) sit in dlib's 150x150 chip with padding 0.25, in chip pixels: the
# mean over the 1,355 LFW images that pairs.txt does not use (../shared/data/lfw/images), each face
# found by retinaface, fitted by dlib's 5-point shape predictor on that box and mapped into the
# chip dlib cuts from it. Printed by scripts/alignment_template.py, which derives it.
DETECTOR_TEMPLATE: Final = np.array(
    [
        [46.24, 45.30],  # right eye (image left); spread over the faces +- 2.75, 2.18
        [102.56, 45.02],  # left eye; +- 2.61, 2.72
        [73.15, 77.60],  # nose tip; +- 7.95, 4.82 (it moves most with the head's turn)
        [50.13, 104.70],  # right mouth corner; +- 4.67, 6.25
        [97.23, 104.59],  # left mouth corner; +- 4.67, 5.95
    ],
    np.float64,
)
# dlib's five points (the 5-point model's layout: corners of the image-right eye, outer then inner,
# corners of the image-left eye, outer then inner, bottom of the nose) as affine combinations of
# the detector's five (each row sums to 1, so the estimate moves with the face under any rotation,
# scale or shift). Least squares over the same faces (scripts/alignment_template.py). They give
# the detector-aligned faces the layout quality.yaw_ratio reads, on dlib's scale: their yaw is 1.02x
# the yaw of dlib's points on a held-out half, where the detector's nose tip (it juts out further
# than dlib's nose base) reads 1.47x.
DLIB5_FROM_DETECTOR: Final = np.array(
    [
        [-0.1194, 1.1798, -0.1638, 0.0837, 0.0197],
        [0.2399, 0.7706, -0.0701, 0.0256, 0.0340],
        [1.2244, -0.1471, -0.1961, 0.0269, 0.0920],
        [0.8116, 0.2062, -0.0841, 0.0324, 0.0339],
        [0.0454, -0.0089, 0.5009, 0.2006, 0.2620],
    ],
    np.float64,
)
# dlib's 5-point layout picked out of the 68-point one (iBUG 300-W indices).
DLIB5_OF_68: Final = (45, 42, 36, 39, 33)
# dlib halves the image (5-tap Gaussian pyramid) until a chip pixel covers at most this many image
# pixels across, then interpolates bilinearly (dlib's extract_image_chips); so does warp_chips.
MAX_WARP_SCALE: Final = 2.0


def dlib_chips(
    image: np.ndarray, shapes: dlib.full_object_detections, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """(faces, size, size, 3) uint8 chips, identical to dlib.get_face_chip for each shape."""
    if len(shapes) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(dlib.get_face_chips(image, shapes, size, padding))


def openface_chips(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = OPENFACE_SIZE,
    indices: tuple[int, int, int] = OUTER_EYES_AND_NOSE,
) -> np.ndarray:
    """OpenFace's affine alignment: (faces, 68, 2) or dlib's 5-point (faces, 5, 2) landmarks -> (faces, size,
    size, 3) uint8 chips.

    ``indices`` are 68-point indices; dlib's 5-point layout holds the eye corners and the nose base of the
    68 (DLIB5_OF_68), so the outer eyes and nose are found in it too (no other ``indices`` are).
    """
    if landmarks.ndim != 3 or (len(landmarks) and landmarks.shape[1] not in (5, 68)):
        raise ValueError(f"OpenFace alignment needs 68- or dlib's 5-point landmarks, got {landmarks.shape}")
    target = (size * OPENFACE_TEMPLATE[list(indices)]).astype(np.float32)
    chips = np.zeros((len(landmarks), size, size, 3), np.uint8)
    if len(landmarks) == 0:
        return chips
    chosen = list(indices)
    if landmarks.shape[1] == 5:
        if not set(indices) <= set(DLIB5_OF_68):
            missing = sorted(set(indices) - set(DLIB5_OF_68))
            raise ValueError(f"dlib's 5 points hold none of the 68-point indices {missing}")
        chosen = [DLIB5_OF_68.index(i) for i in indices]
    for i, points in enumerate(landmarks):
        matrix = cv2.getAffineTransform(points[chosen].astype(np.float32), target)
        chips[i] = cv2.warpAffine(image, matrix, (size, size))
    return chips


def dlib_chip_transforms(
    shapes: dlib.full_object_detections, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """(faces, 2, 3) affine maps from image pixels to the pixels of dlib's chip for each shape.

    The geometry of dlib's get_mapping_to_chip: the chip's top-left, top-right and bottom-right
    pixels are the corners of the rotated rectangle of dlib.get_face_chip_details.
    """
    transforms = np.zeros((len(shapes), 2, 3), np.float64)
    chip_corners = np.float32([[0, 0], [size - 1, 0], [size - 1, size - 1]])
    for i, details in enumerate(dlib.get_face_chip_details(shapes, size, padding)):
        rect = details.rect
        left, top, right, bottom = rect.left(), rect.top(), rect.right(), rect.bottom()
        centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
        cos, sin = np.cos(details.angle), np.sin(details.angle)
        corners = np.array([[left, top], [right, top], [right, bottom]]) - centre
        rotated = corners @ np.array([[cos, sin], [-sin, cos]]) + centre
        transforms[i] = cv2.getAffineTransform(rotated.astype(np.float32), chip_corners)
    return transforms


def similarity_transforms(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(faces, 2, 3) least-squares similarity transforms (rotation, uniform scale, shift) taking each
    face's points (faces, K, 2) onto ``template`` (K, 2); batched in closed form.

    In complex numbers a similarity is w = a z + b; the least-squares a is the centred template's
    projection onto the centred points (Umeyama's solution, which never reflects in 2-D).
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != template.shape or template.ndim != 2 or template.shape[1] != 2:
        raise ValueError(f"points must be (faces, {len(template)}, 2) to match the template, got {points.shape}")
    z = points[..., 0] + 1j * points[..., 1]
    w = template[:, 0] + 1j * template[:, 1]
    z_mean, w_mean = z.mean(axis=1, keepdims=True), w.mean()
    z_centred, w_centred = z - z_mean, w - w_mean
    spread = (np.abs(z_centred) ** 2).sum(axis=1)
    if np.any(spread <= 1e-12):
        raise ValueError("cannot align a face whose landmarks all coincide")
    a = (np.conj(z_centred) * w_centred).sum(axis=1) / spread
    b = w_mean - a * z_mean[:, 0]
    transforms = np.empty((len(points), 2, 3), np.float64)
    transforms[:, 0] = np.stack([a.real, -a.imag, b.real], axis=1)
    transforms[:, 1] = np.stack([a.imag, a.real, b.imag], axis=1)
    return transforms


def warp_chips(image: np.ndarray, transforms: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """(faces, size, size, 3) uint8 chips through (faces, 2, 3) image-to-chip affine maps, as dlib cuts them.

    Large faces are first halved with cv2.pyrDown (the 1-4-6-4-1 kernel of dlib's pyramid) until a
    chip pixel spans at most MAX_WARP_SCALE image pixels, so bilinear sampling does not skip pixels
    and alias. Pixels that sample outside the image are black and values are truncated, not
    rounded, as in dlib's chips (measured on LFW: half the embedding distance to dlib's chip of rounding).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    transforms = np.asarray(transforms, np.float64)
    chips = np.zeros((len(transforms), size, size, 3), np.uint8)
    if len(transforms) == 0:
        return chips
    height, width = image.shape[:2]
    determinants = np.linalg.det(transforms[:, :, :2])
    if not np.all(np.isfinite(determinants) & (np.abs(determinants) > 1e-12)):
        raise ValueError("a chip transform is degenerate (zero scale or not finite)")
    inverses = np.stack([cv2.invertAffineTransform(transform) for transform in transforms])
    # Image pixels per chip pixel, and the halvings that bring it to at most MAX_WARP_SCALE.
    scales = 1.0 / np.sqrt(np.abs(determinants))
    levels = np.maximum(0, np.ceil(np.log2(scales / MAX_WARP_SCALE))).astype(int)
    # Where each chip pixel samples the image: (faces, size, size) x and y, as outer sums.
    steps = np.arange(size, dtype=np.float64)
    source_x = inverses[:, 0, 0, None, None] * steps + inverses[:, 0, 1, None, None] * steps[:, None]
    source_x += inverses[:, 0, 2, None, None]
    source_y = inverses[:, 1, 0, None, None] * steps + inverses[:, 1, 1, None, None] * steps[:, None]
    source_y += inverses[:, 1, 2, None, None]
    # dlib leaves a chip pixel black unless all four of its bilinear neighbours are in the image;
    # OpenCV blends the border in instead (measured: up to 0.07 apart in embedding for an edge face).
    inside = (source_x >= 0) & (source_x < width - 1) & (source_y >= 0) & (source_y < height - 1)
    # Only the part of the image each chip covers (plus the pyramid's reach) is filtered and warped.
    margins = 2 * 2.0**levels + 2
    corners = np.stack([source_x[:, [0, 0, -1, -1], [0, -1, 0, -1]], source_y[:, [0, 0, -1, -1], [0, -1, 0, -1]]], 2)
    low = np.maximum(np.floor(corners.min(axis=1)) - margins[:, None], 0).astype(int)
    high = np.minimum(np.ceil(corners.max(axis=1)) + margins[:, None] + 1, (width, height)).astype(int)
    for i, transform in enumerate(transforms):
        (x0, y0), (x1, y1) = low[i], high[i]
        if x1 <= x0 or y1 <= y0:
            continue  # the chip lies wholly outside the image: black, as dlib cuts it
        # 8 fractional bits: OpenCV warps 16-bit images 4x faster than float ones, and the shift
        # back truncates as dlib does (matches a float warp's floor at all but 0.02% of pixels).
        region = image[y0:y1, x0:x1].astype(np.uint16) << 8
        halvings = 0
        while halvings < levels[i] and min(region.shape[:2]) > 1:
            region = cv2.pyrDown(region)
            halvings += 1
        # pyrDown's pixel i sits on pixel 2i of the level below, so an image point p is
        # (p - origin) / 2**halvings in the region: fold that into the map.
        local = transform.copy()
        local[:, :2] *= 2.0**halvings
        local[:, 2] += transform[:, :2] @ np.array([x0, y0], np.float64)
        warped = cv2.warpAffine(region, local, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        warped[~inside[i]] = 0
        chips[i] = warped >> 8
    return chips


def detector_chips(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(faces, 150, 150, 3) uint8 chips for the face ResNet from the detector's (faces, 5, 2) landmarks."""
    landmarks = np.asarray(landmarks, np.float64)
    if len(landmarks) == 0:
        return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    return warp_chips(image, similarity_transforms(landmarks, DETECTOR_TEMPLATE), CHIP_SIZE)


def dlib_points_from_detector(landmarks: np.ndarray) -> np.ndarray:
    """dlib's 5-point layout (faces, 5, 2) estimated from the detector's five points (faces, 5, 2)."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"detector landmarks must be (faces, 5, 2), got {landmarks.shape}")
    return np.einsum("ji,nik->njk", DLIB5_FROM_DETECTOR, landmarks).astype(np.float32)
