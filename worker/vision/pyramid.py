"""dlib's image pyramids for the MMOD detector, reproduced to the last bit of dlib's CPU arithmetic.

Three pieces, each matching a dlib routine (facts from dlib's image_pyramid.h, interpolation.h, dnn/input.h):

- ``resize_bilinear``: dlib's ``resize_image`` with bilinear interpolation. Corners are aligned
  (source = destination * (in - 1) / (out - 1)); row positions are accumulated in double; column
  positions four at a time in float32 SIMD lanes, which drift slightly, with the last columns done in
  double. We replay the same float32/float64 operations so the results are bit-identical.
- ``tiled_pyramid_layout`` / ``build_tiled_pyramid``: ``pyramid_down<N>`` levels (each floor((N-1)/N)
  of the previous, while at least 5 rows high), packed into one canvas with 10 px between levels and an
  11 px outer border, as ``input_rgb_image_pyramid`` does. Each level is resized from the previous one.
- ``pyramid_up2`` / ``rect_down2``: ``pyramid_up`` with ``pyramid_down<2>``, which dlib's Python
  detector applies ``upsample_num_times``, and the mapping of boxes back to the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np
import torch

MIN_LEVEL_HEIGHT = 5  # dlib stops the pyramid before a level would be shorter than this


# --- dlib's resize_image (bilinear) -------------------------------------------------------------


@dataclass(frozen=True)
class _ResizePlan:
    """Source taps and weights of one dlib bilinear resize, as CPU tensors."""

    rows: torch.Tensor  # (2H,) int64 source rows: the upper taps, then the lower ones
    columns: torch.Tensor  # (2W,) int64 source columns: the left taps, then the right ones
    simd_columns: int  # columns [0, simd_columns) take dlib's float32 SIMD path, the rest its scalar path
    vertical: torch.Tensor  # (2, H, 1) float32 1 - fraction and fraction, for the SIMD columns
    horizontal: torch.Tensor  # (2, 1, simd_columns) float32 1 - fraction and fraction
    tb: torch.Tensor  # (H, 1) float64 vertical fractions (scalar path)
    lr32: torch.Tensor  # (tail,) float32 horizontal fractions of the scalar path for float images
    lr64: torch.Tensor  # (tail,) float64 horizontal fractions of the scalar path for 8-bit images


@lru_cache(maxsize=512)
def _resize_plan(in_h: int, in_w: int, out_h: int, out_w: int) -> _ResizePlan:
    x_scale = (in_w - 1) / max(out_w - 1, 1)
    y_scale = (in_h - 1) / max(out_h - 1, 1)
    # y accumulates in double, one add per row, starting from -y_scale.
    ys = np.cumsum(np.concatenate(([-y_scale], np.full(out_h, y_scale))))[1:]
    top = np.floor(ys).astype(np.int64)
    bottom = np.minimum(top + 1, in_h - 1)
    tb = ys - top

    # SIMD lanes: lane j starts at float32(-4 s + j s) and adds float32(4 s) once per block of 4 columns.
    start = -4 * x_scale
    chunks = out_w // 4 + 2
    lanes = np.empty((chunks + 1, 4), dtype=np.float32)
    lanes[0] = np.array([start, start + x_scale, start + 2 * x_scale, start + 3 * x_scale], dtype=np.float32)
    lanes[1:] = np.float32(4 * x_scale)
    lanes = np.cumsum(lanes, axis=0, dtype=np.float32)[1:]  # sequential float32 adds, as the SIMD loop
    lane_left = lanes.astype(np.int64)  # truncation; coordinates are never negative here
    blocks = np.nonzero(lane_left[:, 3] + 1 >= in_w)[0]
    simd_blocks = int(blocks[0]) if blocks.size else chunks
    split = min(4 * simd_blocks, out_w)
    simd_x = lanes[:simd_blocks].reshape(-1)[:split]
    simd_left = lane_left[:simd_blocks].reshape(-1)[:split]

    # Scalar tail: x = -s + c s, then one double add per column.
    tail_x = np.cumsum(np.concatenate(([-x_scale + split * x_scale], np.full(out_w - split, x_scale))))[1:]
    tail_left = np.floor(tail_x).astype(np.int64)

    left = np.concatenate((simd_left, tail_left))
    lr = (simd_x - simd_left.astype(np.float32)).astype(np.float32)
    horizontal = np.stack((np.float32(1) - lr, lr))[:, None, :]
    vertical = np.stack(((1 - tb).astype(np.float32), tb.astype(np.float32)))[:, :, None]
    return _ResizePlan(
        rows=torch.from_numpy(np.concatenate((top, bottom))),
        columns=torch.from_numpy(np.concatenate((left, np.minimum(left + 1, in_w - 1)))),
        simd_columns=split,
        vertical=torch.from_numpy(np.ascontiguousarray(vertical)),
        horizontal=torch.from_numpy(np.ascontiguousarray(horizontal)),
        tb=torch.from_numpy(tb[:, None]),
        lr32=torch.from_numpy((tail_x - tail_left).astype(np.float32)),
        lr64=torch.from_numpy(tail_x - tail_left),
    )


@lru_cache(maxsize=512)
def _device_plan(in_h: int, in_w: int, out_h: int, out_w: int, device: torch.device) -> _ResizePlan:
    """The plan with its tensors on ``device`` (kept, so a GPU gets them once, not once per call)."""
    plan = _resize_plan(in_h, in_w, out_h, out_w)
    if device.type == "cpu":
        return plan
    moved = {f.name: getattr(plan, f.name).to(device) for f in fields(plan) if f.type == "torch.Tensor"}
    return replace(plan, **moved)


def resize_bilinear(src: torch.Tensor, out_h: int, out_w: int, uint8_pixels: bool = False) -> torch.Tensor:
    """dlib's ``resize_image(in, out)`` of (N, C, H, W) float32 planes to (N, C, out_h, out_w).

    ``uint8_pixels``: the values are those of an 8-bit image; results are truncated to integers (still
    float32) and the scalar tail computes in double, as dlib does for ``rgb_pixel`` images. For float
    images (the pyramid levels) the tail mixes float and double as dlib's float path does.
    """
    batch, channels, in_h, in_w = src.shape
    if out_h <= 1 or out_w <= 1:
        return src.new_zeros((batch, channels, out_h, out_w))  # dlib fills such outputs with 0
    plan = _device_plan(in_h, in_w, out_h, out_w, src.device)
    # One gather for the upper and lower source rows, one for the left and right source columns
    # (the latter on a 2-D view: index_select on the last dim of a 4-D tensor is several times slower).
    row_taps = src.index_select(2, plan.rows)
    taps = row_taps.reshape(-1, in_w).index_select(1, plan.columns).view(batch, channels, 2 * out_h, 2 * out_w)
    split = plan.simd_columns
    upper, lower = taps[:, :, :out_h], taps[:, :, out_h:]
    parts = []
    if split > 0:
        (inv_tb, tb32), (inv_lr, lr) = plan.vertical, plan.horizontal
        # float32 weight products, then separate multiplies and adds in dlib's order (no fused multiply-add)
        acc = upper[..., :split] * (inv_tb * inv_lr)
        acc += upper[..., out_w : out_w + split] * (inv_tb * lr)
        acc += lower[..., :split] * (tb32 * inv_lr)
        acc += lower[..., out_w : out_w + split] * (tb32 * lr)
        parts.append(torch.trunc_(acc) if uint8_pixels else acc)
    if split < out_w:
        tb, lr32, lr64 = plan.tb, plan.lr32, plan.lr64
        tl, tr = upper[..., split:out_w], upper[..., out_w + split :]
        bl, br = lower[..., split:out_w], lower[..., out_w + split :]
        if uint8_pixels:
            tl, tr, bl, br = (t.double() for t in (tl, tr, bl, br))
            top_mix = (1 - lr64) * tl + lr64 * tr
            bottom_mix = (1 - lr64) * bl + lr64 * br
            parts.append(torch.trunc((1 - tb) * top_mix + tb * bottom_mix).float())
        else:
            top_mix = ((1 - lr32) * tl + lr32 * tr).double()
            bottom_mix = ((1 - lr32) * bl + lr32 * br).double()
            parts.append(((1 - tb) * top_mix + tb * bottom_mix).float())
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=3)


# --- the tiled pyramid ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TiledPyramid:
    """Where each pyramid level lies in the canvas: (left, top, right, bottom), inclusive, level 0 first."""

    rects: tuple[tuple[int, int, int, int], ...]
    height: int
    width: int
    rate_n: int = 6

    @property
    def levels(self) -> int:
        return len(self.rects)


def _intersects(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return max(a[0], b[0]) <= min(a[2], b[2]) and max(a[1], b[1]) <= min(a[3], b[3])


@lru_cache(maxsize=128)
def tiled_pyramid_layout(
    height: int, width: int, n: int = 6, padding: int = 10, outer_padding: int = 11
) -> TiledPyramid:
    """The canvas layout dlib's ``input_rgb_image_pyramid<pyramid_down<n>>`` uses for one image size.

    The levels run down a first column; once a level fits beside level 0 and the column is past half
    the total height, the rest climb back up a second column, right-aligned, from the bottom.
    """
    if height <= 0 or width <= 0:
        return TiledPyramid(rects=(), height=0, width=0, rate_n=n)
    rate = (n - 1.0) / n
    sizes = [(width, height)]
    nr, nc = height, width
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < MIN_LEVEL_HEIGHT:
            break
        sizes.append((nc, nr))

    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    w0, h0 = sizes[0]
    column_height = 0
    prev_width = 0
    for w, h in sizes:
        if w <= w0 - prev_width - padding and (column_height - h0) * 2 >= total_height - h0:
            break
        column_height += h + padding
        prev_width = w
    column_height -= padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    index = 0
    while y < column_height + outer_padding and index < len(sizes):
        w, h = sizes[index]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        index += 1
    y -= padding
    first = rects[0]
    while index < len(sizes):
        w, h = sizes[index]
        right, bottom = outer_padding + w0 - 1, y - 1
        rect = (right - w + 1, bottom - h + 1, right, bottom)
        if _intersects(rect, first):
            break  # dlib drops the levels that would run into level 0
        rects.append(rect)
        y -= h + padding
        index += 1
    return TiledPyramid(
        rects=tuple(rects), height=column_height + 2 * outer_padding, width=w0 + 2 * outer_padding, rate_n=n
    )


def build_tiled_pyramid(images: torch.Tensor, layout: TiledPyramid) -> torch.Tensor:
    """The canvas (N, C, layout.height, layout.width) with every level of ``images`` (N, C, H, W) in place.

    Pixels outside the levels are 0. Each level is dlib's bilinear resize of the level before it.
    The result is in channels_last memory, the layout the convolutions run fastest in.
    """
    batch, channels = images.shape[:2]
    canvas = images.new_zeros((batch, channels, layout.height, layout.width))
    left, top, right, bottom = layout.rects[0]
    canvas[:, :, top : bottom + 1, left : right + 1] = images
    previous = images
    for left, top, right, bottom in layout.rects[1:]:
        level = resize_bilinear(previous, bottom - top + 1, right - left + 1)
        canvas[:, :, top : bottom + 1, left : right + 1] = level
        previous = level
    return canvas.contiguous(memory_format=torch.channels_last)


def canvas_boxes_to_image(centers: np.ndarray, box_width: float, box_height: float, layout: TiledPyramid) -> np.ndarray:
    """Boxes of the given size centred on canvas points (K, 2) as (x, y), mapped to image coordinates.

    As dlib's ``tiled_pyramid_to_image``: the level is the tile nearest the centre (the first one at equal
    distance), its corner is subtracted, and each level up maps p -> p * n/(n-1) + 0.3. Returns (K, 4)
    float64 (left, top, right, bottom) before rounding.
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    rects = np.asarray(layout.rects, dtype=np.float64).reshape(-1, 4)
    nearest_x = np.clip(centers[:, None, 0], rects[None, :, 0], rects[None, :, 2])
    nearest_y = np.clip(centers[:, None, 1], rects[None, :, 1], rects[None, :, 3])
    distance = np.hypot(nearest_x - centers[:, None, 0], nearest_y - centers[:, None, 1])
    level = np.argmin(distance, axis=1)
    half_w, half_h = (box_width - 1) / 2, (box_height - 1) / 2
    origin = rects[level, :2]
    boxes = np.stack(
        (
            centers[:, 0] - half_w - origin[:, 0],
            centers[:, 1] - half_h - origin[:, 1],
            centers[:, 0] + half_w - origin[:, 0],
            centers[:, 1] + half_h - origin[:, 1],
        ),
        axis=1,
    )
    ratio = layout.rate_n / (layout.rate_n - 1.0)
    for step in range(int(level.max(initial=0))):
        going_up = (level > step)[:, None]
        boxes = np.where(going_up, boxes * ratio + 0.3, boxes)
    return boxes


def round_rects(boxes: np.ndarray) -> np.ndarray:
    """dlib's drectangle -> rectangle conversion, as int64: halves round away from zero.

    Seen on a real photo: a box edge at -12.5 becomes -13 in dlib (floor(v + 0.5) would give -12).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    return (np.sign(boxes) * np.floor(np.abs(boxes) + 0.5)).astype(np.int64)


# --- pyramid_up / rect_down with pyramid_down<2> ------------------------------------------------


def pyramid_up2_size(height: int, width: int) -> tuple[int, int]:
    """Size of dlib's ``pyramid_up(img, pyramid_down<2>)``: the rounded up-mapped image rectangle."""
    # point_up(p) = (p + (1.25, 0.75)) * 2 on the corners (0, 0) and (W-1, H-1), then rounded.
    bottom = math.floor((height - 1 + 0.75) * 2 + 0.5)
    right = math.floor((width - 1 + 1.25) * 2 + 0.5)
    return bottom + 1, right + 1


def pyramid_up2(pixels: torch.Tensor) -> torch.Tensor:
    """dlib's ``pyramid_up`` of 8-bit planes (N, C, H, W) held as float32: about twice the size."""
    out_h, out_w = pyramid_up2_size(pixels.shape[2], pixels.shape[3])
    return resize_bilinear(pixels, out_h, out_w, uint8_pixels=True)


def rect_down2(rects: np.ndarray, levels: int) -> np.ndarray:
    """Integer rectangles (K, 4) found on a ``levels`` times up-sampled image, mapped back and rounded."""
    boxes = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    offset = np.array([1.25, 0.75, 1.25, 0.75])
    for _ in range(levels):
        boxes = boxes / 2.0 - offset
    return round_rects(boxes)
