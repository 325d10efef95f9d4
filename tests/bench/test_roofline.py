"""`facewatch bench roofline`: FLOPs from layer shapes, and the rows it prints, on the real face ResNet."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from worker.bench.roofline import network_flops, run_roofline
from worker.models.face_resnet import load_face_resnet
from worker.models.files import FACE_RESNET, model_path
from worker.runtime.device import cpu_has_bf16


def test_flops_are_counted_from_the_layer_shapes():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, stride=2, groups=2))
    # 150x150x8 outputs of 3x3x3 taps, then 74x74x4 outputs of 3x3x(8/2) taps
    assert network_flops(conv) == 2 * (150 * 150 * 8 * 27 + 74 * 74 * 4 * 36)
    assert network_flops(nn.Sequential(nn.Flatten(), nn.Linear(3 * 150 * 150, 10))) == 2 * 10 * 3 * 150 * 150


def test_fused_forward_gives_the_networks_fp32_descriptors():
    import torch

    network = load_face_resnet(model_path(FACE_RESNET)).to(memory_format=torch.channels_last)
    chips = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8))
    x = network.normalise(chips).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(network.forward_fused(x), network(x), atol=1e-5, rtol=0)


def test_face_resnet_flops_and_roofline_rows():
    network = load_face_resnet(model_path(FACE_RESNET))
    assert network_flops(network) == 541_708_288  # 0.54 GFLOP per chip (docs/benchmarks.md)
    chips = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=np.uint8)
    bf16 = cpu_has_bf16()
    rows = list(run_roofline(network, chips, bf16, threads=(1,), min_seconds=0.0, rounds=1))
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    gemm = [row for row in rows if row["what"].startswith("torch.mm")]
    assert [row["precision"] for row in gemm] == precisions and all(row["gflops"] > 0 for row in gemm)
    embeds = [row for row in rows if row["what"].startswith("embed batch 2")]
    assert len(embeds) == 4 * len(precisions)
    for row in embeds:
        ceiling = next(g["gflops"] for g in gemm if g["precision"] == row["precision"])
        assert row["gflops"] == pytest.approx(row["faces_per_s"] * 541_708_288 / 1e9)
        assert row["fraction_of_gemm"] == pytest.approx(row["gflops"] / ceiling)
