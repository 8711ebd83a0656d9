"""The arithmetic of the networks' matrix products: float32, or bfloat16 under autocast where the hardware
multiplies bfloat16 natively.

``--precision auto`` picks bf16 only on such hardware: a CUDA device that supports bf16, or a CPU with AMX
(Intel's tile units, the ``amx_bf16`` flag of /proc/cpuinfo), where a 784-500-500-392 MLP runs about 4x faster
than in float32. Elsewhere bf16 is emulated and slower, and auto means fp32. Under bf16 only the networks'
matrix products run in bf16 (torch.autocast); every network's output is cast back to float32 before any
log-density, log-sum-exp, KL or sum of the estimators, so every reported number is computed in float32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .choices import PRECISIONS


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX with bf16 (Linux: the amx_bf16 flag in /proc/cpuinfo; elsewhere False)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices natively: CUDA with bf16 support, or a CPU with AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_amx()


def resolve(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16" for a requested precision ("auto": bf16 where ``native_bf16``, fp32 elsewhere)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a resolved precision runs the networks in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
