"""dlib's MMOD CNN face detector network (mmod_human_face_detector.dat) in PyTorch.

Input: the tiled pyramid canvas, normalised as dlib does ((pixel - channel mean) / 256, zeros between
levels). Output: the (N, 1, h, w) score map. Cell (r, c) scores the 80x80 window centred on canvas
point (8c + 14, 8r + 14). The affine (frozen batch-norm) layers are folded into the convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelFileError
from worker.models.dlib_format import Affine, Conv, DlibNetwork, expect_kinds, load_network
from worker.models.torch_layers import folded_conv

_CONV_BLOCK = ["con", "affine", "relu"]
EXPECTED_KINDS = _CONV_BLOCK * 6 + ["con"]
_EXPECTED_CONVS = (  # (out channels, kernel, stride, padding) from the input up: dlib's net_type
    (16, 5, 2, 0),
    (32, 5, 2, 0),
    (32, 5, 2, 0),
    (45, 5, 1, 2),
    (45, 5, 1, 2),
    (45, 5, 1, 2),
    (1, 9, 1, 4),
)


@dataclass(frozen=True)
class MmodSettings:
    """What the file says about using the network: input means, pyramid padding, window and NMS."""

    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    window_width: int
    window_height: int
    nms_iou_threshold: float
    nms_percent_covered: float


class OneChannelConv(nn.Module):
    """A stride-1 k x k convolution to a single output channel, computed as a 1x1 convolution to k*k
    maps (one per kernel offset) whose shifted copies are then summed.

    oneDNN pads the one output channel to a block of 16, so the direct 9x9 convolution took as long
    as a 45-channel layer (measured 18-23 ms against 4 ms this way on a 640x480 canvas).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        _, channels, kernel, _ = conv.weight.shape
        self.kernel = kernel
        self.padding = conv.padding[0]
        # (channels, k*k): column i*k + j holds the weights of kernel offset (i, j)
        taps = conv.weight.detach()[0].permute(1, 2, 0).reshape(kernel * kernel, channels).t()
        self.register_buffer("taps", taps.contiguous())
        self.register_buffer("bias", conv.bias.detach().reshape(1, 1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        k, pad = self.kernel, self.padding
        depth = k * k
        # The 1x1 convolution as one matrix product on channels-last pixels (torch sends a 1x1
        # convolution on channels-last input to its slow reference kernel), written into a
        # zero-padded (N, H + 2 pad, W + 2 pad, k*k) buffer.
        pixels = x.permute(0, 2, 3, 1).reshape(-1, channels)
        maps = x.new_zeros((batch, height + 2 * pad, width + 2 * pad, depth))
        maps[:, pad : pad + height, pad : pad + width] = (pixels @ self.taps).view(batch, height, width, depth)
        rows, cols = height + 2 * pad - k + 1, width + 2 * pad - k + 1
        padded_w = width + 2 * pad
        # view[n, i, j, y, x] = maps[n, y + i, x + j, i*k + j]: the shifted maps as one strided view
        shifted = maps.as_strided(
            (batch, k, k, rows, cols),
            (maps.stride(0), padded_w * depth + k, depth + 1, padded_w * depth, depth),
        )
        return shifted.sum(dim=(1, 2)).unsqueeze(1) + self.bias


def output_to_canvas(index: torch.Tensor | int, convs: list[nn.Conv2d]) -> torch.Tensor | int:
    """dlib's output_tensor_to_input_tensor: map a score-map index back through every convolution."""
    for conv in reversed(convs):
        index = index * conv.stride[0] - conv.padding[0] + conv.kernel_size[0] // 2
    return index


class MmodNet(nn.Module):
    """The 7-convolution MMOD network; forward takes the normalised canvas (N, 3, H, W)."""

    def __init__(self, network: DlibNetwork, name: str = "MMOD detector") -> None:
        super().__init__()
        expect_kinds(network, EXPECTED_KINDS, name)
        if network.loss != "loss_mmod_":
            raise ModelFileError(f"{name}: loss layer {network.loss}, expected loss_mmod_: not the MMOD detector")
        if network.input.size is not None:
            raise ModelFileError(f"{name}: fixed-size input, expected an image pyramid: not the MMOD detector")
        layers = [layer for layer in network.layers if isinstance(layer, (Conv, Affine))]
        convs = [layer for layer in layers if isinstance(layer, Conv)]
        affines = [layer for layer in layers if isinstance(layer, Affine)]
        folded = [folded_conv(conv, affine) for conv, affine in zip(convs[:-1], affines, strict=True)]
        folded.append(folded_conv(convs[-1], None))
        for index, (conv, (out_channels, kernel, stride, padding)) in enumerate(
            zip(folded, _EXPECTED_CONVS, strict=True)
        ):
            found = (conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0])
            if found != (out_channels, kernel, stride, padding) or conv.kernel_size[0] != conv.kernel_size[1]:
                raise ModelFileError(
                    f"{name}: convolution {index} is {found}, expected {(out_channels, kernel, stride, padding)}"
                )
        self.convs = nn.ModuleList(folded)
        self.score = OneChannelConv(folded[-1])
        options = network.loss_options
        self.settings = MmodSettings(
            mean_rgb=network.input.mean_rgb,
            pyramid_padding=network.input.pyramid_padding,
            pyramid_outer_padding=network.input.pyramid_outer_padding,
            window_width=int(options["detector_width"]),
            window_height=int(options["detector_height"]),
            nms_iou_threshold=float(options["nms_iou_threshold"]),
            nms_percent_covered=float(options["nms_percent_covered"]),
        )
        self.register_buffer("mean_rgb", torch.tensor(network.input.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """RGB pixel values (N, 3, H, W) as float32 -> the network's input scale."""
        return (pixels - self.mean_rgb) / 256.0

    def canvas_point(self, index: torch.Tensor | int) -> torch.Tensor | int:
        """Canvas coordinate of score-map row or column ``index`` (8 i + 14 for this network)."""
        return output_to_canvas(index, list(self.convs))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Score-map size for a canvas of this size; (0, 0) when a filter no longer fits, as on tiny images."""
        for conv in self.convs:
            kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            if min(height, width) + 2 * padding < kernel:
                return 0, 0
            height = (height + 2 * padding - kernel) // stride + 1
            width = (width + 2 * padding - kernel) // stride + 1
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = F.relu(conv(x), inplace=True)
        return self.score(x)


def load_mmod_net(path: str | Path) -> MmodNet:
    """Read mmod_human_face_detector.dat into an MmodNet (eval mode, CPU)."""
    return MmodNet(load_network(path), name=str(path)).eval()
