"""Choosing the torch device and precision, and CPU threading that behaves on shared machines."""

from __future__ import annotations

import torch

from worker.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; fp16 and bf16 only on CUDA, where they pay off."""
    if precision not in PRECISIONS:
        raise ConfigError(f"embedder.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(f"embedder.precision: {precision} needs a CUDA device; the CPU path runs fp32")
    if device.type == "cuda" and precision == "fp32":
        # TF32 convolutions (the default on Ampere and newer) break parity with dlib at 1e-5.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return PRECISIONS[precision]


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (None: torch's default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError("embedder.threads must be at least 1")
        torch.set_num_threads(threads)
