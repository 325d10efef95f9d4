"""Cheap augmentation of aligned chips, in torch: mirror, small shift and scale, colour jitter.

One draw of parameters per face is applied to every chip size of that face (the student's 96x96 and the
teacher's 150x150 chip), in the chip's own relative coordinates, so that in distillation both networks
see the same augmented face. The draws come from a seeded torch.Generator: the same seed gives the same
batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random changes (0 turns one off)."""

    flip: float = 0.5  # probability of a mirror image
    shift: float = 0.05  # up to this fraction of the chip's side, each axis
    scale: float = 0.05  # zoom in or out by up to this fraction
    brightness: float = 0.2  # multiply by 1 +- this
    contrast: float = 0.2  # blend with the mean grey by 1 +- this
    saturation: float = 0.2  # blend with the grey image by 1 +- this


NONE = AugmentSettings(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass
class Draw:
    """One batch's random parameters, per face."""

    flip: torch.Tensor  # (B,) bool
    shift: torch.Tensor  # (B, 2) in [-1, 1] grid units / 2
    scale: torch.Tensor  # (B,)
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor


def draw(count: int, settings: AugmentSettings, generator: torch.Generator) -> Draw:
    """Random parameters for ``count`` faces."""

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2.0 - 1.0

    return Draw(
        flip=torch.rand(count, generator=generator) < settings.flip,
        shift=uniform(count, 2) * settings.shift * 2.0,  # grid coordinates span 2 per chip side
        scale=1.0 + uniform(count) * settings.scale,
        brightness=1.0 + uniform(count) * settings.brightness,
        contrast=1.0 + uniform(count) * settings.contrast,
        saturation=1.0 + uniform(count) * settings.saturation,
    )


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma (ITU-R BT.601 weights)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def apply(chips: torch.Tensor, params: Draw) -> torch.Tensor:
    """(B, 3, H, W) float chips in [0, 1] -> augmented, same shape and range."""
    count = len(chips)
    theta = torch.zeros(count, 2, 3)
    sign = torch.where(params.flip, -1.0, 1.0)
    theta[:, 0, 0] = sign / params.scale  # sampling grid: a zoom-in by s reads a 1/s window
    theta[:, 1, 1] = 1.0 / params.scale
    theta[:, :, 2] = params.shift
    theta = theta.to(chips.device, chips.dtype)
    grid = F.affine_grid(theta, list(chips.shape), align_corners=False)
    x = F.grid_sample(chips, grid, mode="bilinear", padding_mode="border", align_corners=False)
    view = (count, 1, 1, 1)
    x = x * params.brightness.to(x).view(view)
    mean_grey = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = mean_grey + (x - mean_grey) * params.contrast.to(x).view(view)
    grey = _grey(x)
    x = grey + (x - grey) * params.saturation.to(x).view(view)
    return x.clamp(0.0, 1.0)
