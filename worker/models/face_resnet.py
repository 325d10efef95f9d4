"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in PyTorch.

Input: a batch of 150x150 RGB chips normalised as dlib does ((pixel - channel mean) / 256).
Output: the 128-d descriptors, the raw output of the last fully connected layer, as dlib gives.
The affine (frozen batch-norm) layers are folded into the convolutions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelFileError
from worker.models.dlib_format import Affine, Conv, DlibNetwork, FullyConnected, expect_kinds, load_network
from worker.models.torch_layers import add_zero_filled, folded_conv

# (filters, down-block first?, plain blocks) from the input up; dlib's anet_type alevel4..alevel0.
_STAGES = ((32, False, 3), (64, True, 3), (128, True, 2), (256, True, 2), (256, True, 0))
_BLOCK = ["marker", "con", "affine", "relu", "con", "affine"]
_PLAIN = [*_BLOCK, "add_prev", "relu"]
_DOWN = [*_BLOCK, "marker", "marker", "avg_pool", "add_prev", "relu"]


def expected_layer_kinds() -> list[str]:
    """The exact layer sequence of the face ResNet, input to output."""
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, down, plain in _STAGES:
        if down:
            kinds += _DOWN
        kinds += _PLAIN * plain
    return [*kinds, "avg_pool", "fc"]


class ResidualBlock(nn.Module):
    """relu(shortcut + affine(con(relu(affine(con(x)))))); shortcut is x, or avg_pool(x) downsampling."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, downsample: bool) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(F.relu(self.first(x), inplace=True))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_zero_filled(shortcut, y), inplace=True)


class FaceResNet(nn.Module):
    """The 29-layer face ResNet; forward takes normalised NCHW float input."""

    def __init__(self, network: DlibNetwork, name: str = "face ResNet") -> None:
        super().__init__()
        expect_kinds(network, expected_layer_kinds(), name)
        if network.input.size != (150, 150):
            raise ModelFileError(f"{name}: input size {network.input.size}, expected (150, 150)")
        layers = [layer for layer in network.layers if isinstance(layer, (Conv, Affine, FullyConnected))]
        convs = iter(zip(layers[0:-1:2], layers[1:-1:2], strict=True))
        self.stem = folded_conv(*next(convs))
        blocks = []
        for _, down, plain in _STAGES:
            for index in range(int(down) + plain):
                blocks.append(ResidualBlock(folded_conv(*next(convs)), folded_conv(*next(convs)), down and index == 0))
        self.blocks = nn.Sequential(*blocks)
        fc = layers[-1]
        assert isinstance(fc, FullyConnected)
        self.fc = nn.Linear(fc.weight.shape[0], fc.weight.shape[1], bias=fc.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.weight.T)))
            if fc.bias is not None:
                self.fc.bias.copy_(torch.from_numpy(fc.bias))
        self.register_buffer("mean_rgb", torch.tensor(network.input.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.distance_threshold = float(network.loss_options.get("distance_threshold", 0.6))

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB chips -> the network's NCHW float input (channels_last memory)."""
        x = chips.permute(0, 3, 1, 2).to(self.mean_rgb.dtype)
        return (x - self.mean_rgb) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x), inplace=True), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """forward with oneDNN's fused CPU kernels (convolution + ReLU; convolution + add + ReLU closing a
        residual block where the shortcut fits inside the convolution's output; the kernels torch.compile
        uses on CPU), for channels_last CPU input. The same descriptors within 1e-5 in fp32; in bf16 it
        saves elementwise passes (1.25x to 1.3x the plain network, `bench roofline`), so the embedder runs
        bf16 on CPU through it (docs/benchmarks.md)."""
        fused = torch.ops.mkldnn._convolution_pointwise

        def options(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
            return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups  # type: ignore[arg-type]

        stem = self.stem
        x = F.max_pool2d(fused(x, stem.weight, stem.bias, *options(stem), "relu", [], ""), 3, 2)
        for block in self.blocks:
            first, second = block.first, block.second
            hidden = fused(x, first.weight, first.bias, *options(first), "relu", [], "")
            shortcut = F.avg_pool2d(x, 2, 2) if block.downsample else x
            rows = (hidden.shape[2] + 2 * second.padding[0] - second.kernel_size[0]) // second.stride[0] + 1
            cols = (hidden.shape[3] + 2 * second.padding[1] - second.kernel_size[1]) // second.stride[1] + 1
            grow = (second.out_channels - shortcut.shape[1], rows - shortcut.shape[2], cols - shortcut.shape[3])
            if min(grow) < 0:  # the shortcut sticks out of the output somewhere: unfused
                x = F.relu(add_zero_filled(shortcut, second(hidden)), inplace=True)
                continue
            if max(grow) > 0:  # dlib's add_prev: zeros beyond the shortcut's extent
                shortcut = F.pad(shortcut, (0, grow[2], 0, grow[1], 0, grow[0]))
            shortcut = shortcut.contiguous(memory_format=torch.channels_last)
            x = fused.binary(hidden, shortcut, second.weight, second.bias, *options(second), "add", 1.0, "relu", [], "")
        return self.fc(x.mean(dim=(2, 3)))


def load_face_resnet(path: str | Path) -> FaceResNet:
    """Read dlib_face_recognition_resnet_model_v1.dat into a FaceResNet (eval mode, CPU)."""
    return FaceResNet(load_network(path), name=str(path)).eval()
