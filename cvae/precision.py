"""The arithmetic of the networks' matrix products: float32, or bfloat16 under autocast where the hardware
multiplies bfloat16 natively and fast.

``--precision auto`` picks bf16 on: a CUDA device that supports bf16; a CPU with AMX (``amx_bf16`` in
/proc/cpuinfo); an AMD CPU with AVX512-BF16 (``avx512_bf16``: a 784-500-500-392 MLP on 4096 rows ran 4.5x faster in
bf16 than in float32 on an AMD EPYC). On Intel CPUs with AVX512-BF16 but no AMX bf16 measured slower than float32;
there, and on CPUs without bf16 instructions, auto means fp32. ``benchmarks/bench_precision.py`` measures both on
any machine; ``--precision bf16`` forces bf16.

Under bf16 only the networks' matrix products run in bf16 (torch.autocast); the models cast every network's
output back to the data's dtype before any log-density, log-sum-exp, KL or sum, so every reported number is
computed in float32 (the estimates move by less than 0.01 nats per image on the paper's models:
tests/test_precision.py, benchmarks/bench_precision.py).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .settings import PRECISIONS


def cpu_info() -> tuple[str, set[str]]:
    """The CPU's vendor and feature flags (Linux: /proc/cpuinfo; elsewhere "" and an empty set)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", set()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)  # the last processor's, like the first's
    return fields.get("vendor_id\t", "").strip(), set(fields.get("flags\t\t", "").split())


@functools.cache
def cpu_choice() -> tuple[str, str]:
    """(auto's precision on this CPU, the reason), read once per process."""
    return cpu_precision(*cpu_info())


def cpu_precision(vendor: str, flags: set[str]) -> tuple[str, str]:
    """(auto's precision on a CPU of this vendor and these flags, the reason)."""
    if "amx_bf16" in flags:
        return "bf16", "AMX-BF16"
    if "avx512_bf16" in flags and vendor == "AuthenticAMD":
        return "bf16", "AVX512-BF16 on an AMD CPU"
    if "avx512_bf16" in flags:
        return "fp32", "AVX512-BF16 without AMX on an Intel CPU"
    return "fp32", "no native bf16 on this CPU"


def choose(device: torch.device) -> tuple[str, str]:
    """(auto's precision on a device, the reason): "bf16" where the device multiplies bf16 natively."""
    if device.type == "cuda":
        return ("bf16", "CUDA with bf16") if torch.cuda.is_bf16_supported() else ("fp32", "CUDA without bf16")
    if device.type == "cpu":
        return cpu_choice()
    return "fp32", f"{device.type}: bf16 not used"


def resolve(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16" for a requested precision ("auto": ``choose``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return choose(device)[0] if precision == "auto" else precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a resolved precision runs the networks in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
