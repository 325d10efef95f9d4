"""dlib's MMOD CNN face detector, run in PyTorch: the same boxes as dlib, batched, CPU or CUDA.

Equivalent to ``dlib.cnn_face_detection_model_v1(path)(image, upsample)``: the image is doubled
``upsample`` times with dlib's pyramid_up, tiled into dlib's pyramid canvas, scored by the network,
and every window scoring above ``min_score`` goes through dlib's greedy non-max suppression.
Images of the same size share one forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from worker.errors import ConfigError, ImageError
from worker.models.files import MMOD_DETECTOR, model_path
from worker.models.mmod_cnn import MmodNet, MmodSettings, load_mmod_net
from worker.runtime.device import select_device, select_dtype
from worker.runtime.heap import keep_large_blocks_in_heap
from worker.vision.boxes import Box
from worker.vision.detectors.base import FaceDetector
from worker.vision.image import to_rgb8
from worker.vision.nms import nms_keep
from worker.vision.pyramid import (
    TiledPyramid,
    build_tiled_pyramid,
    canvas_boxes_to_image,
    pyramid_up2,
    pyramid_up2_size,
    rect_down2,
    round_rects,
    tiled_pyramid_layout,
)

MAX_BATCH = 8  # images per forward pass
# Canvas pixels per forward pass on CPU. Measured on 2 cores: batching 250x250 images gains about 10%,
# while batching 640x480 ones loses 20% (the first layers' activations fall out of cache), so big
# images go one at a time. On CUDA only MAX_BATCH limits a batch.
CPU_CANVAS_BUDGET = 1_500_000


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    """RGB uint8 H x W x 3; gray and RGBA arrays are converted as the image loader does."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    return to_rgb8(image, name=f"image {index}")


class MmodDetector(FaceDetector):
    """dlib's CNN face detector in torch; ``upsample`` doubles the image that many times first.

    Boxes are dlib's rectangles (right and bottom inclusive), possibly partly outside the image,
    with dlib's detection confidence as score.
    """

    name = "mmod"

    def __init__(
        self,
        upsample: int = 0,
        min_score: float = 0.0,
        device: str = "auto",
        model_dir: str | os.PathLike[str] | None = None,
        max_batch: int = MAX_BATCH,
        precision: str = "fp32",
    ) -> None:
        if upsample < 0:
            raise ConfigError(f"detector.upsample must be 0 or more, got {upsample}")
        if max_batch < 1:
            raise ConfigError(f"mmod max_batch must be at least 1, got {max_batch}")
        self.upsample = upsample
        self.min_score = float(min_score)
        self.max_batch = max_batch
        try:
            self.device = select_device(device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("embedder.device", "detector.device")) from None
        try:
            self.dtype = select_dtype(precision, self.device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("embedder.precision", "detector.mmod_precision")) from None
        if self.device.type == "cuda":
            # TF32 convolutions and matrix products would move scores by about 1e-3 and flip borderline boxes.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        path: Path = model_path(MMOD_DETECTOR, model_dir)
        # channels_last weights match the canvas, which is built with channels last
        self.net: MmodNet = load_mmod_net(path).to(self.device, memory_format=torch.channels_last)
        # The pyramid is built in float32 (dlib's arithmetic); only the network runs at self.dtype.
        self.net.convs.to(self.dtype)
        self.net.score.to(self.dtype)
        if self.device.type == "cpu":
            keep_large_blocks_in_heap()
        self.settings: MmodSettings = self.net.settings

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        rgb = [_as_rgb(image, index) for index, image in enumerate(images)]
        results: list[list[Box]] = [[] for _ in rgb]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(rgb):
            groups.setdefault(image.shape[:2], []).append(index)
        for (height, width), members in groups.items():
            step = self._batch_size(height, width)
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                for index, boxes in zip(chunk, self._detect_same_size([rgb[i] for i in chunk]), strict=True):
                    results[index] = boxes
        return results

    def _layout(self, height: int, width: int) -> TiledPyramid:
        for _ in range(self.upsample):
            height, width = pyramid_up2_size(height, width)
        return tiled_pyramid_layout(
            height, width, padding=self.settings.pyramid_padding, outer_padding=self.settings.pyramid_outer_padding
        )

    def _batch_size(self, height: int, width: int) -> int:
        if self.device.type != "cpu":
            return self.max_batch
        layout = self._layout(height, width)
        return max(1, min(self.max_batch, CPU_CANVAS_BUDGET // max(1, layout.height * layout.width)))

    @torch.inference_mode()
    def score_maps(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, TiledPyramid]:
        """The network's score maps (N, h, w) for same-size RGB images, and the pyramid layout used."""
        pixels = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).contiguous().float()
        for _ in range(self.upsample):
            pixels = pyramid_up2(pixels)
        layout = self._layout(*images[0].shape[:2])
        if self.net.output_size(layout.height, layout.width) == (0, 0):
            return torch.zeros((len(images), 0, 0)), layout  # too small for the network: nothing to find
        canvas = build_tiled_pyramid(self.net.normalise(pixels), layout)
        scores = self.net(canvas.to(self.dtype))
        return scores[:, 0].float().cpu(), layout

    def _detect_same_size(self, images: Sequence[np.ndarray]) -> list[list[Box]]:
        scores, layout = self.score_maps(images)
        settings = self.settings
        results = []
        for score_map in scores.numpy().astype(np.float64):  # dlib compares the scores as doubles
            rows, cols = np.nonzero(score_map > self.min_score)
            confidence = score_map[rows, cols]
            order = np.argsort(-confidence, kind="stable")
            rows, cols, confidence = rows[order], cols[order], confidence[order]
            centers = np.stack((self.net.canvas_point(cols), self.net.canvas_point(rows)), axis=1)
            rects = round_rects(canvas_boxes_to_image(centers, settings.window_width, settings.window_height, layout))
            keep = nms_keep(rects, settings.nms_iou_threshold, settings.nms_percent_covered)
            rects, confidence = rects[keep], confidence[keep]
            if self.upsample:
                rects = rect_down2(rects, self.upsample)
            results.append(
                [Box(*(int(v) for v in rect), score=float(s)) for rect, s in zip(rects, confidence, strict=True)]
            )
        return results
