"""Torch building blocks shared by the dlib network ports."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.models.dlib_format import Affine, Conv


def folded_conv(conv: Conv, affine: Affine | None) -> nn.Conv2d:
    """A Conv2d equal to dlib's con layer followed by its affine layer (folded into the weights)."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    module = nn.Conv2d(in_channels, out_channels, (kh, kw), stride=conv.stride, padding=conv.padding, bias=True)
    weight = conv.weight.astype(np.float64)
    bias = conv.bias.astype(np.float64) if conv.bias is not None else np.zeros(out_channels)
    if affine is not None:
        gamma = affine.gamma.astype(np.float64)
        weight = weight * gamma[:, None, None, None]
        bias = bias * gamma + affine.beta.astype(np.float64)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        module.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return module


def add_zero_filled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: both inputs anchored at index 0, zeros beyond each one's own extent."""
    if a.shape == b.shape:
        return a + b
    channels = max(a.shape[1], b.shape[1])
    rows = max(a.shape[2], b.shape[2])
    cols = max(a.shape[3], b.shape[3])

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, cols - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)
