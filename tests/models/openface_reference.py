"""A reference nn4.small2 as OpenFace's Torch7 code builds and saves it, and a Torch7-semantics forward pass.

``build_model`` follows models/openface/nn4.small2.def.lua module by module, with the fields nn and
dpnn give each module (dpnn's Inception around a DepthConcat, SpatialLPPooling as Square ->
SpatialAveragePooling -> MulConstant -> Sqrt, ...), random weights. ``reference_forward`` runs such
a tree the way Torch7 does, module by module in float64, written apart from worker.models.nn4_small2
(it interprets the saved modules; it does not know the architecture), so the importer is checked
against an independent computation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tests.models.torch7_writer import Storage
from worker.models.torch7 import TorchObject, lua_list

EMPTY = np.zeros(0, np.float32)


class Builder:
    """Makes the modules; ``variant`` is 'nn' (as the .def.lua), 'cudnn' (cudnn.* classes) or 'bn-v1'
    (batch norms saved by nn before BatchNormalization version 2: running_std instead of running_var)."""

    def __init__(self, seed: int, variant: str = "nn") -> None:
        self.rng = np.random.default_rng(seed)
        self.variant = variant

    def _module(self, name: str, fields: dict, package: str = "nn", version: int = 1) -> TorchObject:
        if self.variant == "cudnn" and package == "cudnn?":
            package = "cudnn"
        elif package == "cudnn?":
            package = "nn"
        base = {"output": EMPTY, "gradInput": EMPTY, "train": False, "_type": "torch.FloatTensor"}
        return TorchObject(f"{package}.{name}", version, {**base, **fields})

    def normal(self, shape, scale: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def conv(self, nin: int, nout: int, k: int, s: int = 1, p: int = 0, mm: bool = False) -> TorchObject:
        weight = self.normal((nout, nin, k, k), np.sqrt(2.0 / (nin * k * k)))
        fields = {
            "nInputPlane": nin,
            "nOutputPlane": nout,
            "kW": k,
            "kH": k,
            "dW": s,
            "dH": s,
            "padW": p,
            "padH": p,
            "weight": weight.reshape(nout, -1) if mm else weight,  # SpatialConvolutionMM keeps a 2-d weight
            "bias": self.normal((nout,), 0.05),
            "gradWeight": EMPTY,
            "gradBias": EMPTY,
        }
        if mm:
            fields |= {"finput": EMPTY, "fgradInput": EMPTY}
        return self._module("SpatialConvolutionMM" if mm else "SpatialConvolution", fields, "cudnn?")

    def bn(self, n: int) -> TorchObject:
        eps = 1e-5
        var = self.rng.uniform(0.5, 1.5, n).astype(np.float32)
        fields = {
            "eps": eps,
            "momentum": 0.1,
            "affine": True,
            "weight": self.rng.uniform(0.5, 1.5, n).astype(np.float32),
            "bias": self.normal((n,), 0.1),
            "running_mean": self.normal((n,), 0.1),
        }
        if self.variant == "bn-v1":
            fields["running_std"] = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
            return self._module("SpatialBatchNormalization", fields, version=0)
        fields["running_var"] = var
        return self._module("SpatialBatchNormalization", fields, "cudnn?", version=2)

    def relu(self) -> TorchObject:
        return self._module("ReLU", {"threshold": 0, "val": 0, "inplace": False}, "cudnn?")

    def pool(self, name: str, k: int, s: int, p: int = 0) -> TorchObject:
        fields = {"kW": k, "kH": k, "dW": s, "dH": s, "padW": p, "padH": p, "ceil_mode": False}
        if name == "SpatialMaxPooling":
            fields["indices"] = EMPTY
        else:
            fields |= {"count_include_pad": True, "divide": True}
        return self._module(name, fields, "cudnn?")

    def lrn(self) -> TorchObject:
        return self._module("SpatialCrossMapLRN", {"size": 5, "alpha": 0.0001, "beta": 0.75, "k": 1, "scale": EMPTY})

    def lp_pool(self, planes: int, k: int) -> TorchObject:
        inner = [
            self._module("Square", {}),
            self.pool("SpatialAveragePooling", k, k),
            self._module("MulConstant", {"constant_scalar": k * k, "inplace": False}),
            self._module("Sqrt", {"eps": 0}),
        ]
        return self._module("SpatialLPPooling", {"kW": k, "kH": k, "dW": k, "dH": k, "modules": inner})

    def sequential(self, modules: list[TorchObject]) -> TorchObject:
        return self._module("Sequential", {"modules": modules})

    def inception(self, nin, kernels, strides, outputs, reduces, pool) -> TorchObject:
        """dpnn's nn.Inception(config) with batchNorm = true: its fields and its DepthConcat of columns."""
        transfer = self.relu()
        columns = []
        for i, (k, s, out) in enumerate(zip(kernels, strides, outputs, strict=True)):
            columns.append(
                self.sequential(
                    [
                        self.conv(nin, reduces[i], 1),
                        self.bn(reduces[i]),
                        self.relu(),
                        self.conv(reduces[i], out, k, s, k // 2),
                        self.bn(out),
                        self.relu(),
                    ]
                )
            )
        pool_column = [pool]
        i = len(kernels)
        if i < len(reduces) and reduces[i] is not None:
            pool_column += [self.conv(nin, reduces[i], 1), self.bn(reduces[i]), self.relu()]
        columns.append(self.sequential(pool_column))
        if i + 1 < len(reduces) and reduces[i + 1] is not None:
            columns.append(self.sequential([self.conv(nin, reduces[i + 1], 1), self.bn(reduces[i + 1]), self.relu()]))
        concat = self._module(
            "DepthConcat", {"dimension": 2, "modules": columns, "outputSize": Storage(np.zeros(4, np.int64))}
        )
        # reduceSize with holes, as Lua keeps {128, 32, nil, nil}: only the integer keys that are set.
        reduce_table = {index + 1: value for index, value in enumerate(reduces) if value is not None}
        fields = {
            "inputSize": nin,
            "kernelSize": list(kernels),
            "kernelStride": list(strides),
            "outputSize": list(outputs),
            "reduceSize": reduce_table,
            "reduceStride": {},
            "transfer": transfer,
            "batchNorm": True,
            "padding": True,
            "poolSize": 3,
            "poolStride": 1,
            "pool": pool,  # the same module as in the pool column: a shared reference in the file
            "module": concat,
            "modules": [concat],
        }
        return self._module("Inception", fields)

    def reshape(self, *size: int) -> TorchObject:
        fields = {"size": Storage(np.array(size, np.int64)), "nelement": int(np.prod(size)), "vector": False}
        return self._module("Reshape", fields)


def build_model(seed: int = 0, variant: str = "nn", embedding: int = 128) -> TorchObject:
    """nn4.small2 as OpenFace's createModel() builds it, with random weights."""
    b = Builder(seed, variant)
    mp = lambda k, s, p=0: b.pool("SpatialMaxPooling", k, s, p)  # noqa: E731
    modules = [
        b.conv(3, 64, 7, 2, 3, mm=True),
        b.bn(64),
        b.relu(),
        mp(3, 2, 1),
        b.lrn(),
        b.conv(64, 64, 1, mm=True),
        b.bn(64),
        b.relu(),
        b.conv(64, 192, 3, 1, 1, mm=True),
        b.bn(192),
        b.relu(),
        b.lrn(),
        mp(3, 2, 1),
        b.inception(192, (3, 5), (1, 1), (128, 32), (96, 16, 32, 64), mp(3, 2)),
        b.inception(256, (3, 5), (1, 1), (128, 64), (96, 32, 64, 64), b.lp_pool(256, 3)),
        b.inception(320, (3, 5), (2, 2), (256, 64), (128, 32, None, None), mp(3, 2)),
        b.inception(640, (3, 5), (1, 1), (192, 64), (96, 32, 128, 256), b.lp_pool(640, 3)),
        b.inception(640, (3, 5), (2, 2), (256, 128), (160, 64, None, None), mp(3, 2)),
        b.inception(1024, (3,), (1,), (384,), (96, 96, 256), b.lp_pool(960, 3)),
        b.reshape(736, 3, 3),
        b.inception(736, (3,), (1,), (384,), (96, 96, 256), mp(3, 2)),
        b.pool("SpatialAveragePooling", 3, 3),
        b.reshape(736),
        b._module("View", {"size": Storage(np.array([736], np.int64)), "numElements": 736}),
        b._module(
            "Linear",
            {"weight": b.normal((embedding, 736), np.sqrt(1.0 / 736)), "bias": b.normal((embedding,), 0.05)},
        ),
        b._module("Normalize", {"p": 2, "eps": 1e-10}),
    ]
    return b.sequential(modules)


def _children(modules: list | dict) -> list:
    """A module list as built here (a list) or as read back (a Lua array)."""
    return modules if isinstance(modules, list) else lua_list(modules)


def _weight(module: TorchObject) -> torch.Tensor:
    return torch.from_numpy(np.asarray(module.fields["weight"], np.float64))


def reference_forward(module: TorchObject, x: torch.Tensor) -> torch.Tensor:
    """Torch7's forward of ``module`` on float64 NCHW ``x``: each module class as nn/dpnn computes it."""
    name = module.class_name.rsplit(".", 1)[-1]
    f = module.fields
    if name in ("Sequential", "SpatialLPPooling"):
        for child in _children(f["modules"]):
            x = reference_forward(child, x)
        return x
    if name == "Inception":
        return reference_forward(f["module"], x)
    if name == "DepthConcat":
        outs = [reference_forward(child, x) for child in _children(f["modules"])]
        size = [max(o.shape[d] for o in outs) for d in range(4)]
        result = torch.zeros(x.shape[0], sum(o.shape[1] for o in outs), size[2], size[3], dtype=x.dtype)
        channel = 0
        for o in outs:
            # DepthConcat:windowNarrow: start = floor((outputSize - currentSize) / 2) + 1 (1-based)
            top, left = (size[2] - o.shape[2]) // 2, (size[3] - o.shape[3]) // 2
            result[:, channel : channel + o.shape[1], top : top + o.shape[2], left : left + o.shape[3]] = o
            channel += o.shape[1]
        return result
    if name in ("SpatialConvolution", "SpatialConvolutionMM"):
        weight = _weight(module).reshape(f["nOutputPlane"], f["nInputPlane"], f["kH"], f["kW"])
        bias = torch.from_numpy(np.asarray(f["bias"], np.float64))
        return F.conv2d(x, weight, bias, (int(f["dH"]), int(f["dW"])), (int(f["padH"]), int(f["padW"])))
    if name == "SpatialBatchNormalization":
        mean = torch.from_numpy(np.asarray(f["running_mean"], np.float64)).view(1, -1, 1, 1)
        if "running_var" in f:
            inv_std = 1.0 / torch.sqrt(torch.from_numpy(np.asarray(f["running_var"], np.float64)) + f["eps"])
        else:
            inv_std = torch.from_numpy(np.asarray(f["running_std"], np.float64))
        bias = torch.from_numpy(np.asarray(f["bias"], np.float64)).view(1, -1, 1, 1)
        return (x - mean) * inv_std.view(1, -1, 1, 1) * _weight(module).view(1, -1, 1, 1) + bias
    if name == "ReLU":
        return x.clamp(min=0)
    if name == "SpatialMaxPooling":
        return F.max_pool2d(x, int(f["kW"]), int(f["dW"]), int(f["padW"]))
    if name == "SpatialAveragePooling":
        assert f["padW"] == 0
        return F.avg_pool2d(x, int(f["kW"]), int(f["dW"]))
    if name == "SpatialCrossMapLRN":
        # scale = k + alpha / size * sum of squares over the `size` channels centred on each one
        half = int(f["size"]) // 2
        squares = F.pad(x * x, (0, 0, 0, 0, half, half))
        window = sum(squares[:, i : i + x.shape[1]] for i in range(int(f["size"])))
        return x * (f["k"] + f["alpha"] / f["size"] * window) ** -f["beta"]
    if name == "Square":
        return x * x
    if name == "MulConstant":
        return x * f["constant_scalar"]
    if name == "Sqrt":
        return torch.sqrt(x + f["eps"])
    if name in ("Reshape", "View"):
        size = [int(v) for v in getattr(f["size"], "data", f["size"])]
        return x.reshape(x.shape[0], *size)
    if name == "Linear":
        return x @ _weight(module).T + torch.from_numpy(np.asarray(f["bias"], np.float64))
    if name == "Normalize":
        return x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + f["eps"])
    raise AssertionError(f"no reference for {module.class_name}")
