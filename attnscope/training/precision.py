"""``trainer.precision: auto``: bfloat16 only where the hardware computes it natively.

On a CPU without avx512_bf16 or AMX, bf16 autocast is emulated and trains at about half
the speed of float32, so ``auto`` picks bf16 mixed precision only where the device has
native bf16 (CPU: avx512_bf16 or AMX; CUDA: ``torch.cuda.is_bf16_supported()``) and
float32 everywhere else.
"""

from __future__ import annotations

import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FLOAT32 = "32-true"


def native_bf16(accelerator: str) -> bool:
    """Whether the device ``accelerator`` names (or picks, for ``auto``) computes bfloat16 natively."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)
    return bool(cpu._is_avx512_bf16_supported() or amx())


def resolve_precision(precision: str, accelerator: str) -> str:
    """The precision Lightning gets: ``auto`` resolved by :func:`native_bf16`; any other name as it is."""
    if precision != AUTO:
        return precision
    return BF16 if native_bf16(accelerator) else FLOAT32
