"""Choosing the torch device and precision, and CPU threading that behaves on shared machines."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from worker.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# CPU flags of bfloat16 matrix hardware: AMX tiles (Sapphire Rapids and later) or AVX-512 BF16
# dot products (Cooper Lake, Zen 4). Without either, torch emulates bf16 and runs slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (or of ``cpuinfo``, its text); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:  # not Linux: no flags known, so nothing is assumed
            return frozenset()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bfloat16 matrix units (amx_bf16 or avx512_bf16)."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cpu', 'cuda' and 'cuda:N' are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"embedder.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"embedder.device: {name!r} asked for, but this torch build or machine has no CUDA")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"embedder.device: {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """The precision a setting means on ``device``: 'auto' is bf16 on a CPU with bf16 units, else fp32.

    On CUDA 'auto' stays fp32 (parity with dlib at 1e-5); fp16 and bf16 are asked for by name there.
    ``cpuinfo``: /proc/cpuinfo's text, for tests; read from the machine when None.
    """
    if precision not in PRECISION_CHOICES:
        raise ConfigError(f"embedder.precision: {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_bf16(cpuinfo) else "fp32"
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("embedder.precision: fp16 needs a CUDA device; on CPU use bf16 (with AMX or AVX-512 BF16)")
    if device.type == "cpu" and precision == "bf16" and not cpu_has_bf16(cpuinfo):
        raise ConfigError(
            f"embedder.precision: bf16 on CPU needs bfloat16 units ({' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo); "
            "this CPU has neither, and emulated bf16 runs slower than fp32: use fp32 or auto"
        )
    return precision


def select_dtype(precision: str, device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """The torch dtype of ``precision`` (auto, fp32, fp16, bf16) on ``device``; see resolve_precision."""
    resolved = resolve_precision(precision, device, cpuinfo)
    if device.type == "cuda" and resolved == "fp32":
        # TF32 convolutions (the default on Ampere and newer) break parity with dlib at 1e-5.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return PRECISIONS[resolved]


def precision_name(dtype: torch.dtype) -> str:
    """'fp32', 'fp16' or 'bf16' for a dtype of PRECISIONS (metrics and bench rows)."""
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def pipeline_torch_threads(lanes: int, cores: int | None = None) -> int:
    """torch threads for the streaming pipeline: the cores shared by its ``lanes``, at least 1."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // max(1, lanes))


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (None: torch's default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError("embedder.threads must be at least 1")
        torch.set_num_threads(threads)
