"""Importing OpenFace's Torch7 nn4.small2 models (nn4.small2.v1.t7) into worker.models.nn4_small2.

The file's module tree (nn.Sequential of convolutions, batch norms, dpnn's nn.Inception around an
nn.DepthConcat of branch Sequentials, SpatialLPPooling, ...) is flattened depth first into layers
and compared, layer by layer, with Nn4Small2.layout(): kinds, channel counts, kernels, strides,
padding. Only a file that matches is copied, weights in order. The nn and cudnn variants of each
module are accepted (a model saved from the GPU holds cudnn.* modules and torch.CudaTensor weights),
as are SpatialConvolutionMM's 2-d weights and the running_std of batch norms saved before nn's
BatchNormalization version 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.errors import ModelFileError
from worker.models import torch7
from worker.models.nn4_small2 import Layer, Nn4Small2
from worker.models.torch7 import TorchObject, lua_list

CONTAINERS = {"Sequential", "Inception", "Decorator"}
SKIPPED = {"Reshape", "View", "Identity", "Dropout"}  # no effect on a 96x96 input at inference


@dataclass
class FoundLayer:
    """A layer of the file: its kind and parameters as Nn4Small2.layout() spells them, the module, where it sits."""

    kind: str
    params: tuple
    module: TorchObject
    where: str


def _short(class_name: str) -> str:
    """'cudnn.SpatialConvolution' -> 'SpatialConvolution'."""
    return class_name.rsplit(".", 1)[-1]


def _number(module: TorchObject, *names: str, default: float | None = None) -> float:
    for name in names:
        value = module.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    if default is not None:
        return default
    raise ModelFileError(f"{module.class_name} has no field {names[0]}")


def _square(module: TorchObject, where: str, w: str, h: str, default: float | None = None) -> int:
    """A kernel/stride/padding that must be the same across and down (nn4.small2 has no other)."""
    across = _number(module, w, default=default)
    down = _number(module, h, default=across)
    if across != down:
        raise ModelFileError(f"{where}: {module.class_name} with {w}={across} but {h}={down}")
    return int(across)


def _tensor(module: TorchObject, name: str, where: str) -> np.ndarray:
    value = module.get(name)
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        raise ModelFileError(f"{where}: {module.class_name} has no float tensor {name!r}")
    return value


def flatten(obj: Any, where: str = "model") -> list[FoundLayer]:
    """The file's layers depth first, containers opened, Reshape/View dropped."""
    if not isinstance(obj, TorchObject):
        raise ModelFileError(f"{where}: expected an nn module, found {type(obj).__name__}")
    kind = _short(obj.class_name)
    if kind in SKIPPED:
        return []
    if kind in CONTAINERS:
        children = lua_list(obj.get("modules"))
        if not children and isinstance(obj.get("module"), TorchObject):
            children = [obj.get("module")]
        return [layer for i, child in enumerate(children) for layer in flatten(child, f"{where}.modules[{i + 1}]")]
    if kind in ("DepthConcat", "Concat"):
        dimension = _number(obj, "dimension", default=2)
        if dimension != 2:
            raise ModelFileError(f"{where}: {obj.class_name} over dimension {dimension}, expected 2 (channels)")
        children = lua_list(obj.get("modules"))
        layers = [FoundLayer("depthconcat", (len(children),), obj, where)]
        for i, child in enumerate(children):
            layers += flatten(child, f"{where}.modules[{i + 1}]")
        return layers
    return [_leaf(obj, kind, where)]


def _leaf(obj: TorchObject, kind: str, where: str) -> FoundLayer:
    if kind in ("SpatialConvolution", "SpatialConvolutionMM"):
        params = (
            int(_number(obj, "nInputPlane")),
            int(_number(obj, "nOutputPlane")),
            _square(obj, where, "kW", "kH"),
            _square(obj, where, "dW", "dH", default=1),
            _square(obj, where, "padW", "padH", default=_number(obj, "padding", default=0)),
        )
        return FoundLayer("conv", params, obj, where)
    if kind == "SpatialBatchNormalization":
        return FoundLayer("bn", (len(_tensor(obj, "running_mean", where)),), obj, where)
    if kind == "ReLU":
        return FoundLayer("relu", (), obj, where)
    if kind in ("SpatialMaxPooling", "SpatialAveragePooling"):
        if obj.get("ceil_mode"):
            raise ModelFileError(f"{where}: {obj.class_name} in ceil mode (nn4.small2 rounds down)")
        params = (
            _square(obj, where, "kW", "kH"),
            _square(obj, where, "dW", "dH", default=1),
            _square(obj, where, "padW", "padH", default=0),
        )
        return FoundLayer("maxpool" if kind == "SpatialMaxPooling" else "avgpool", params, obj, where)
    if kind == "SpatialLPPooling":
        return FoundLayer("lppool", (*_lp_pooling(obj, where), 0), obj, where)
    if kind == "SpatialCrossMapLRN":
        params = (int(_number(obj, "size")), _number(obj, "alpha"), _number(obj, "beta"), _number(obj, "k", default=1))
        return FoundLayer("lrn", params, obj, where)
    if kind == "Linear":
        weight = _tensor(obj, "weight", where)
        if weight.ndim != 2:
            raise ModelFileError(f"{where}: Linear weight of shape {weight.shape}")
        return FoundLayer("linear", (weight.shape[1], weight.shape[0]), obj, where)
    if kind == "Normalize":
        return FoundLayer("normalize", (float(_number(obj, "p")),), obj, where)
    raise ModelFileError(f"{where}: unsupported module {obj.class_name}")


def _lp_pooling(obj: TorchObject, where: str) -> tuple[int, int]:
    """(kernel, stride) of a SpatialLPPooling with p=2, checked against what its inner modules compute."""
    kernel = _square(obj, where, "kW", "kH")
    stride = _square(obj, where, "dW", "dH", default=kernel)
    inner = [
        _short(child.class_name) if isinstance(child, TorchObject) else "?" for child in lua_list(obj.get("modules"))
    ]
    # nn's current SpatialLPPooling, and its older form with a ones-filled SpatialConvolutionMap as the summer.
    if inner not in (
        ["Square", "SpatialAveragePooling", "MulConstant", "Sqrt"],
        ["Square", "SpatialConvolutionMap", "Sqrt"],
    ):
        raise ModelFileError(f"{where}: SpatialLPPooling made of {inner}; only p=2 pooling is supported")
    if inner[1] == "SpatialConvolutionMap":
        summer = lua_list(obj.get("modules"))[1]
        weight, bias = summer.get("weight"), summer.get("bias")
        if not (isinstance(weight, np.ndarray) and np.all(weight == 1) and (bias is None or np.all(bias == 0))):
            raise ModelFileError(f"{where}: SpatialLPPooling's summing convolution is not all ones")
    return kernel, stride


def _same(expected: Layer, found: FoundLayer) -> bool:
    if expected[0] != found.kind or len(expected[1]) != len(found.params):
        return False
    return all(
        np.isclose(float(a), float(b), rtol=1e-6, atol=0) for a, b in zip(expected[1], found.params, strict=True)
    )


def _describe(kind: str, params: tuple) -> str:
    return f"{kind}{params}" if params else kind


def _copy(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    if value.size != target.numel():
        raise ModelFileError(f"{what}: {value.size} values, expected {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(value.astype(np.float32).reshape(tuple(target.shape))))


def _load_weights(module: nn.Module, layer: FoundLayer) -> None:
    obj, where = layer.module, f"{layer.where} ({layer.module.class_name})"
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        _copy(module.weight, _tensor(obj, "weight", where), f"{where} weight")
        bias = obj.get("bias")
        if bias is None:  # a convolution saved with noBias()
            module.bias.data.zero_()
        else:
            _copy(module.bias, _tensor(obj, "bias", where), f"{where} bias")
    elif isinstance(module, nn.BatchNorm2d):
        if obj.get("affine") is False or obj.get("weight") is None:
            raise ModelFileError(f"{where}: batch norm without affine weights")
        eps = float(_number(obj, "eps", default=1e-5))
        _copy(module.weight, _tensor(obj, "weight", where), f"{where} weight")
        _copy(module.bias, _tensor(obj, "bias", where), f"{where} bias")
        _copy(module.running_mean, _tensor(obj, "running_mean", where), f"{where} running_mean")
        if obj.get("running_var") is not None:
            variance = _tensor(obj, "running_var", where)
        else:  # nn's BatchNormalization before version 2 kept 1 / sqrt(var + eps)
            variance = _tensor(obj, "running_std", where).astype(np.float64) ** -2 - eps
        _copy(module.running_var, variance, f"{where} running variance")
        module.eps = eps


def load_openface_t7(path: str | Path) -> Nn4Small2:
    """OpenFace's nn4.small2 Torch7 model (e.g. nn4.small2.v1.t7) as an Nn4Small2 in eval mode, on the CPU."""
    layers = flatten(torch7.load(path))
    linear = [layer for layer in layers if layer.kind == "linear"]
    model = Nn4Small2(embedding_size=linear[-1].params[1] if linear else 128)
    expected = model.layout()
    for index, want in enumerate(expected):
        if index >= len(layers):
            raise ModelFileError(
                f"{path}: not nn4.small2: the file ends after {len(layers)} layers, expected {_describe(*want)} next"
            )
        found = layers[index]
        if not _same(want, found):
            raise ModelFileError(
                f"{path}: not nn4.small2: layer {index + 1} at {found.where} is {_describe(found.kind, found.params)} "
                f"({found.module.class_name}), expected {_describe(*want)}"
            )
    if len(layers) > len(expected):
        extra = layers[len(expected)]
        raise ModelFileError(f"{path}: not nn4.small2: an extra layer {extra.kind} at {extra.where}")
    normalize = layers[-1].module
    model.norm_eps = float(_number(normalize, "eps", default=1e-10))
    weighted = [layer for layer in layers if layer.kind in ("conv", "bn", "linear")]
    for module, layer in zip(model.weighted_modules(), weighted, strict=True):
        _load_weights(module, layer)
    return model.eval()
