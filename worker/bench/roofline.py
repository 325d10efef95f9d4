"""`facewatch bench roofline`: the embedder's faces/s against what the chip's matrix rate allows.

The ceiling is the rate of a large square matrix product (torch.mm, n x n, all intra-op threads),
in fp32 and bf16: the convolutions oneDNN runs are matrix products of the same kind, so a network
that did nothing else would embed GEMM GFLOP/s / (GFLOP per chip) faces/s. FLOPs per chip are
counted from the network's layer shapes (2 x multiply-adds of every convolution and the fully
connected layer, as run on a 150x150 chip; pooling, ReLU and additions are left out: they are
memory-bound and add under 1%). Each embedder variant (layout, TorchScript freezing, oneDNN's fused
convolution kernels, threads) is timed in interleaved rounds beside the others and reports its median.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.bench.timing import throughput
from worker.models.face_resnet import FaceResNet
from worker.models.face_spec import CHIP_SIZE

Row = dict[str, Any]
# Large enough that packing and threading overheads vanish (one fp32 product: 137 GFLOP), small enough
# for a few per second on 2 cores with AMX.
GEMM_SIZE = 4096


def gemm_gflops(dtype: torch.dtype, size: int = GEMM_SIZE, min_seconds: float = 2.0) -> float:
    """GFLOP/s of torch.mm on two size x size matrices of ``dtype`` (2 n^3 FLOPs a product)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    with torch.inference_mode():
        products_per_s = throughput(lambda: torch.mm(a, b), 1, min_seconds)
    return products_per_s * 2 * size**3 / 1e9


def network_flops(network: nn.Module, size: int = CHIP_SIZE) -> int:
    """FLOPs (2 x multiply-adds) of the convolutions and linear layers for one size x size RGB input.

    The output shape of each layer comes from a forward pass; the count is out_elements x
    (in_channels / groups) x kernel area for a convolution, out_elements x in_features for a linear layer.
    """
    total = 0

    def count(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            network(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def embed_variants(network: FaceResNet, chips: np.ndarray, bf16: bool) -> dict[tuple[str, str], Callable[[], object]]:
    """(precision, variant) -> a call that embeds ``chips`` (uint8 NHWC) with that variant of the network."""
    batch = torch.from_numpy(np.ascontiguousarray(chips))
    variants: dict[tuple[str, str], Callable[[], object]] = {}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if bf16 else [])
    for name, dtype in dtypes:
        last = copy.deepcopy(network).to(dtype=dtype, memory_format=torch.channels_last).eval()
        plain = copy.deepcopy(network).to(dtype=dtype).eval()
        last.mean_rgb = plain.mean_rgb = network.mean_rgb.float()  # as the embedder: normalised in fp32

        def channels_last(net: FaceResNet = last, dtype: torch.dtype = dtype) -> torch.Tensor:
            x = net.normalise(batch).to(dtype).contiguous(memory_format=torch.channels_last)
            return net(x)

        def nchw(net: FaceResNet = plain, dtype: torch.dtype = dtype) -> torch.Tensor:
            return net(net.normalise(batch).to(dtype).contiguous())

        example = last.normalise(batch).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), warnings.catch_warnings():
            # The trace fixes add_zero_filled's shape checks for this batch's shapes, which is what it times.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch 2.13 deprecates TorchScript; it is measured here as one of the fixes to try, not shipped
            warnings.simplefilter("ignore", DeprecationWarning)
            # freeze folds constants and lets oneDNN fuse convolution + ReLU (+ add) where it can
            frozen = torch.jit.freeze(torch.jit.trace(last, example, check_trace=False))

        def jit_frozen(net: Any = frozen, ref: FaceResNet = last, dtype: torch.dtype = dtype) -> torch.Tensor:
            return net(ref.normalise(batch).to(dtype).contiguous(memory_format=torch.channels_last))

        # What the embedder runs: the plain network in fp32, oneDNN's fused kernels below it.
        fp32 = dtype == torch.float32
        variants[name, "channels_last (shipped)" if fp32 else "channels_last"] = channels_last
        variants[name, "NCHW"] = nchw
        variants[name, "channels_last + jit.freeze"] = jit_frozen

        def onednn_fused(net: FaceResNet = last, dtype: torch.dtype = dtype) -> torch.Tensor:
            return net.forward_fused(net.normalise(batch).to(dtype).contiguous(memory_format=torch.channels_last))

        fused_name = "channels_last + fused conv/add/ReLU"
        variants[name, fused_name if fp32 else f"{fused_name} (shipped)"] = onednn_fused
    return variants


def run_roofline(
    network: FaceResNet,
    chips: np.ndarray,
    bf16: bool,
    threads: tuple[int, ...],
    min_seconds: float = 3.0,
    rounds: int = 3,
) -> Iterator[Row]:
    """GEMM rows (GFLOP/s per precision and thread count), then one row per embedder variant and thread
    count: faces/s, achieved GFLOP/s and its fraction of the GEMM-bound rate at the same precision and threads.

    The matrix products are timed in the same rounds as the variants (each call ``min_seconds / rounds``),
    so that load from other jobs falls on the ceiling and the network alike; every row is its median round.
    """
    flops = network_flops(network)
    variants = embed_variants(network, chips, bf16)
    gemms = {precision: dtype for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if not bf16:
        del gemms["bf16"]
    previous = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            gemm_rates: dict[str, list[float]] = {precision: [] for precision in gemms}
            rates: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
            with torch.inference_mode():
                for round_index in range(rounds):
                    for precision, dtype in gemms.items():
                        gemm_rates[precision].append(gemm_gflops(dtype, min_seconds=min_seconds / rounds))
                    for key, call in variants.items():
                        rates[key].append(
                            throughput(call, len(chips), min_seconds / rounds, warmup=2 if round_index == 0 else 0)
                        )
            gemm = {precision: float(np.median(measured)) for precision, measured in gemm_rates.items()}
            for precision, rate in gemm.items():
                yield {
                    "bench": "roofline",
                    "what": f"torch.mm {GEMM_SIZE}x{GEMM_SIZE}",
                    "precision": precision,
                    "threads": count,
                    "gflops": rate,
                }
            for (precision, variant), measured in rates.items():
                faces = float(np.median(measured))
                achieved = faces * flops / 1e9
                yield {
                    "bench": "roofline",
                    "what": f"embed batch {len(chips)}: {variant}",
                    "precision": precision,
                    "threads": count,
                    "faces_per_s": faces,
                    "gflops": achieved,
                    "gemm_bound_faces_per_s": gemm[precision] * 1e9 / flops,
                    "fraction_of_gemm": achieved / gemm[precision],
                }
    finally:
        torch.set_num_threads(previous)
