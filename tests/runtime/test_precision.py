"""Which precision 'auto' and the explicit settings mean, from the CPU flags (cpuinfo text given)."""

from __future__ import annotations

import pytest
import torch

from worker.errors import ConfigError
from worker.runtime.device import cpu_flags, cpu_has_bf16, precision_name, resolve_precision, select_dtype

CPU = torch.device("cpu")
# Abridged /proc/cpuinfo of a Sapphire Rapids core (AMX and AVX-512 BF16), of a Zen 4 core (AVX-512 BF16,
# no AMX), and of a Skylake core (AVX-512, no bf16 at all).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"
SKYLAKE = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
)
AMX_ONLY = "flags : fpu avx2 amx_bf16 amx_tile\n"


def test_flags_are_read_from_the_flags_line():
    assert {"amx_bf16", "amx_tile", "avx512_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert "bugs" not in cpu_flags(SAPPHIRE_RAPIDS) and "spectre_v1" not in cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_flags("") == frozenset() and cpu_flags("processor : 0\n") == frozenset()


@pytest.mark.parametrize(
    ("cpuinfo", "has"), [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (AMX_ONLY, True), (SKYLAKE, False), ("", False)]
)
def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(cpuinfo, has):
    assert cpu_has_bf16(cpuinfo) is has
    assert resolve_precision("auto", CPU, cpuinfo) == ("bf16" if has else "fp32")
    assert select_dtype("auto", CPU, cpuinfo) == (torch.bfloat16 if has else torch.float32)


def test_auto_stays_fp32_on_cuda_whatever_the_host_cpu():
    # dlib parity at 1e-5 on the GPU; fp16 and bf16 are asked for by name there.
    assert resolve_precision("auto", torch.device("cuda"), SAPPHIRE_RAPIDS) == "fp32"
    assert resolve_precision("bf16", torch.device("cuda"), SKYLAKE) == "bf16"
    assert resolve_precision("fp16", torch.device("cuda:1"), "") == "fp16"


def test_explicit_precisions_on_cpu():
    assert resolve_precision("fp32", CPU, SAPPHIRE_RAPIDS) == "fp32"
    assert resolve_precision("bf16", CPU, ZEN4) == "bf16"
    with pytest.raises(ConfigError, match=r"bf16 on CPU needs bfloat16 units .*use fp32 or auto"):
        resolve_precision("bf16", CPU, SKYLAKE)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device; on CPU use bf16"):
        resolve_precision("fp16", CPU, SAPPHIRE_RAPIDS)
    with pytest.raises(ConfigError, match="'int4' is not one of auto, fp32, fp16, bf16"):
        resolve_precision("int4", CPU, SAPPHIRE_RAPIDS)


def test_precision_names_round_trip():
    for name in ("fp32", "fp16", "bf16"):
        assert precision_name(select_dtype(name, torch.device("cuda"), "")) == name


def test_compat_layer_takes_auto_as_fp32():
    from worker.compat.face_recognition.models import _dlib_precision
    from worker.config import EmbedderConfig

    assert _dlib_precision(EmbedderConfig(precision="auto")).precision == "fp32"
    assert _dlib_precision(EmbedderConfig(precision="bf16")).precision == "bf16"  # asked for by name: kept
