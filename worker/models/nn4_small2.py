"""OpenFace's nn4.small2 (models/openface/nn4.small2.def.lua) in PyTorch.

FaceNet's NN4 with inception blocks 4b-4d removed and smaller 5 blocks: 3x96x96 RGB in [0, 1]
(OpenFace's 96x96 affine alignment, worker.vision.align.openface_chips), 128-d out on the unit
hypersphere. 3,733,968 trainable parameters, as the Lua definition states.

The layout follows Torch7's semantics where PyTorch differs: an inception block concatenates its
branches as dpnn's DepthConcat does (a smaller branch output is zero-padded, centred, to the
largest one's height and width), and SpatialLPPooling(p=2) is sqrt(sum of squares over the window)
with a stride equal to its kernel. ``layout()`` lists the layers in the order OpenFace's Torch7
model holds them (depth first), which the Torch7 importer (worker.models.openface_t7) checks a file
against before it copies the weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 96
EMBEDDING_SIZE = 128
PARAMETERS = 3_733_968  # "Number of Parameters from net:getParameters() with embSize=128" in the .def.lua


@dataclass(frozen=True)
class Pool:
    """An inception block's pooling branch: 'max' (SpatialMaxPooling) or 'lp' (SpatialLPPooling, p=2)."""

    kind: str
    kernel: int
    stride: int


@dataclass(frozen=True)
class Block:
    """One nn.Inception's configuration, as in the .def.lua (reduce sizes: one per kernel, then pool, then 1x1)."""

    name: str
    in_channels: int
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    outputs: tuple[int, ...]
    reduces: tuple[int | None, ...]
    pool: Pool


BLOCKS: tuple[Block, ...] = (
    Block("3a", 192, (3, 5), (1, 1), (128, 32), (96, 16, 32, 64), Pool("max", 3, 2)),
    Block("3b", 256, (3, 5), (1, 1), (128, 64), (96, 32, 64, 64), Pool("lp", 3, 3)),
    Block("3c", 320, (3, 5), (2, 2), (256, 64), (128, 32, None, None), Pool("max", 3, 2)),
    Block("4a", 640, (3, 5), (1, 1), (192, 64), (96, 32, 128, 256), Pool("lp", 3, 3)),
    Block("4e", 640, (3, 5), (2, 2), (256, 128), (160, 64, None, None), Pool("max", 3, 2)),
    Block("5a", 1024, (3,), (1,), (384,), (96, 96, 256), Pool("lp", 3, 3)),
    Block("5b", 736, (3,), (1,), (384,), (96, 96, 256), Pool("max", 3, 2)),
)
FEATURES = 736  # channels out of 5b

# A layer as the importer compares it: (kind, parameters), e.g. ("conv", (in, out, kernel, stride, pad)).
Layer = tuple[str, tuple]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, pad: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, pad),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _conv_layout(seq: nn.Sequential) -> list[Layer]:
    conv, bn = seq[0], seq[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    spec = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0])
    return [("conv", spec), ("bn", (bn.num_features,)), ("relu", ())]


class LPPool(nn.Module):
    """Torch7's SpatialLPPooling with p=2: sqrt of the sum of squares over each window (stride = kernel)."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Torch7 computes it as avg_pool(x^2) * k^2, then sqrt; so does this (the same rounding).
        return torch.sqrt(F.avg_pool2d(x * x, self.kernel, self.stride) * float(self.kernel * self.kernel))


def depth_concat(outputs: list[torch.Tensor]) -> torch.Tensor:
    """dpnn's DepthConcat over channels: each output zero-padded, centred (extra row/column after), to the largest."""
    height = max(out.shape[2] for out in outputs)
    width = max(out.shape[3] for out in outputs)
    padded: list[torch.Tensor] = []
    for out in outputs:
        if out.shape[2] == height and out.shape[3] == width:
            padded.append(out)  # most branches: no pad, no copy before the concatenation
            continue
        top = (height - out.shape[2]) // 2
        left = (width - out.shape[3]) // 2
        padded.append(F.pad(out, (left, width - out.shape[3] - left, top, height - out.shape[2] - top)))
    return torch.cat(padded, dim=1)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Torch7's SpatialCrossMapLRN: x / (k + alpha/size * sum of x^2 over ``size`` neighbouring channels)^beta.

    The same function as nn.LocalResponseNorm (within 3e-7 relative), 2.5x to 4x faster on CPU: the window sums
    come from a cumulative sum along the channels, which are the innermost axis of the channels-last activations
    (torch's kernel pools a 5-D copy instead); beta 0.75 is rsqrt(t) * sqrt(rsqrt(t)), not a pow. The two LRNs
    were a third of nn4.small2's CPU time. bf16 and fp16 input is normalised in float32: a sum of squares needs
    the range (and torch's own kernel has no CPU bfloat16 version).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = x.permute(0, 2, 3, 1).float()  # (N, H, W, C): a view when x is channels-last
        squares = y * y
        before, after = self.size // 2 + 1, (self.size - 1) // 2
        sums = torch.cumsum(F.pad(squares, (before, after)), -1)
        t = (sums[..., self.size :] - sums[..., : -self.size]) * (self.alpha / self.size) + self.k
        if self.beta == 0.75:
            r = torch.rsqrt(t)
            scale = r * torch.sqrt(r)
        else:
            scale = t.pow(-self.beta)
        return (y * scale).permute(0, 3, 1, 2).to(dtype)


class Inception(nn.Module):
    """dpnn's nn.Inception with batchNorm: [1x1 reduce -> kxk conv] per kernel, pool [-> 1x1], [1x1]."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block
        branches = []
        for index, (kernel, stride, out) in enumerate(zip(block.kernels, block.strides, block.outputs, strict=True)):
            reduce = block.reduces[index]
            assert reduce is not None
            branches.append(
                nn.Sequential(
                    *_conv_bn_relu(block.in_channels, reduce, 1),
                    *_conv_bn_relu(reduce, out, kernel, stride, kernel // 2),
                )
            )
        pool = block.pool
        pooling: nn.Module = (
            nn.MaxPool2d(pool.kernel, pool.stride) if pool.kind == "max" else LPPool(pool.kernel, pool.stride)
        )
        pool_reduce = block.reduces[len(block.kernels)]
        pool_branch = [pooling]
        if pool_reduce is not None:
            pool_branch += list(_conv_bn_relu(block.in_channels, pool_reduce, 1))
        branches.append(nn.Sequential(*pool_branch))
        one_by_one = block.reduces[len(block.kernels) + 1] if len(block.reduces) > len(block.kernels) + 1 else None
        if one_by_one is not None:
            branches.append(_conv_bn_relu(block.in_channels, one_by_one, 1))
        self.branches = nn.ModuleList(branches)

    def out_channels(self) -> int:
        """Channels of the concatenated output."""
        pool_reduce = self.block.reduces[len(self.block.kernels)]
        rest = [r for r in self.block.reduces[len(self.block.kernels) + 1 :] if r is not None]
        return sum(self.block.outputs) + (pool_reduce or self.block.in_channels) + sum(rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for branch in self.branches:  # a loop, not a comprehension: TorchScript iterates a ModuleList only so
            outputs.append(branch(x))
        return depth_concat(outputs)

    def layout(self) -> list[Layer]:
        """The block's layers depth first, as dpnn's Inception holds them."""
        layers: list[Layer] = [("depthconcat", (len(self.branches),))]
        count = len(self.block.kernels)
        for index, branch in enumerate(self.branches):
            modules = list(branch)
            if index == count:  # the pooling branch
                pool = self.block.pool
                layers.append((f"{pool.kind}pool", (pool.kernel, pool.stride, 0)))
                modules = modules[1:]
            for start in range(0, len(modules), 3):
                layers += _conv_layout(nn.Sequential(*modules[start : start + 3]))
        return layers


class Nn4Small2(nn.Module):
    """nn4.small2: forward((B, 3, 96, 96) float RGB in [0, 1]) -> (B, 128) unit vectors."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn_relu(3, 64, 7, 2, 3),
            nn.MaxPool2d(3, 2, 1),
            LocalResponseNorm(5, 0.0001, 0.75, 1.0),
            _conv_bn_relu(64, 64, 1),
            _conv_bn_relu(64, 192, 3, 1, 1),
            LocalResponseNorm(5, 0.0001, 0.75, 1.0),
            nn.MaxPool2d(3, 2, 1),
        )
        self.inception = nn.Sequential(*(Inception(block) for block in BLOCKS))
        self.fc = nn.Linear(FEATURES, embedding_size)
        self.norm_eps = 1e-10  # nn.Normalize(2)'s default: x / sqrt(sum(x^2) + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception(self.stem(x))
        x = F.avg_pool2d(x, 3).flatten(1)
        x = self.fc(x)
        return x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + self.norm_eps)

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB chips (already on the network's device) -> the NCHW float32 input in [0, 1]."""
        return chips.permute(0, 3, 1, 2).to(torch.float32).div(255.0)

    @staticmethod
    def preprocess(chips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """OpenFace's input: (B, 96, 96, 3) uint8 RGB chips -> (B, 3, 96, 96) float32 in [0, 1]."""
        tensor = torch.as_tensor(chips)
        if tensor.ndim != 4 or tuple(tensor.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"nn4.small2 takes (B, 96, 96, 3) RGB chips, got shape {tuple(tensor.shape)}")
        return tensor.permute(0, 3, 1, 2).to(torch.float32).div(255.0).contiguous()

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(B, 96, 96, 3) uint8 RGB chips (OpenFace-aligned) -> (B, 128) float32 unit vectors.

        For speed, embed with ``fold_batch_norms(model).to(memory_format=torch.channels_last)``.
        """
        with torch.inference_mode():
            x = self.preprocess(chips).to(self.fc.weight.device).contiguous(memory_format=torch.channels_last)
            return self(x).cpu().numpy()

    def layout(self) -> list[Layer]:
        """Every layer depth first, in the order OpenFace's Torch7 model holds them (Reshape/View left out)."""
        lrn: Layer = ("lrn", (5, 0.0001, 0.75, 1.0))
        layers: list[Layer] = [*_conv_layout(self.stem[0]), ("maxpool", (3, 2, 1)), lrn]
        layers += _conv_layout(self.stem[3]) + _conv_layout(self.stem[4]) + [lrn, ("maxpool", (3, 2, 1))]
        for block in self.inception:
            assert isinstance(block, Inception)
            layers += block.layout()
        return [*layers, ("avgpool", (3, 3, 0)), ("linear", (FEATURES, self.fc.out_features)), ("normalize", (2.0,))]

    def weighted_modules(self) -> list[nn.Module]:
        """The Conv2d, BatchNorm2d and Linear modules in layout() order (the order their weights are stored)."""
        return [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]


def fold_batch_norms(model: Nn4Small2) -> Nn4Small2:
    """An inference copy of ``model`` (eval mode) with each batch norm folded into the convolution before it.

    The same function of the input (within float rounding) with a third fewer passes over the
    activations; its state dict has no batch-norm entries, so weights are loaded into the unfolded model.
    """
    folded = copy.deepcopy(model).eval()
    for sequential in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for index in range(len(sequential) - 1):
            conv, bn = sequential[index], sequential[index + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            with torch.no_grad():
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).float())
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                conv.bias.copy_(((bias - bn.running_mean.double()) * scale + bn.bias.double()).float())
            sequential[index + 1] = nn.Identity()
    return folded


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what Torch7's getParameters() counts: no batch-norm running statistics)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
