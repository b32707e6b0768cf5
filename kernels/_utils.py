"""Shared helpers for the Triton kernels: interpreter detection, autotune config lists, shape buckets,
and the input validation every wrapper runs before launching.

Autotuning policy (decided here, once):

* on a GPU each kernel tunes over a short config list, keyed on *rounded* shapes (``bucket``), so a new
  sequence length or token count inside an already-seen bucket reuses the tuned config instead of
  re-benchmarking every config;
* under ``TRITON_INTERPRET=1`` (CPU, tests only) only the first config is used, so nothing is benchmarked
  and the interpreter's runtime stays predictable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_configs(configs: Sequence[triton.Config]) -> list[triton.Config]:
    """The configs to tune over: all of them on a GPU, only the first under the interpreter."""
    configs = list(configs)
    return configs[:1] if interpreting() else configs


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def bucket(n: int, minimum: int = 16) -> int:
    """The autotune key for a varying size: n rounded up to a power of two, at least ``minimum``."""
    return max(minimum, next_pow2(n))


def dot_upcast(dtype: torch.dtype) -> bool:
    """Whether ``tl.dot`` operands of ``dtype`` must be upcast to fp32 before the dot.

    Only under the interpreter and only for bf16: Triton's interpreter stores bf16 as raw uint16 and its
    ``create_dot`` multiplies those integers with numpy (garbage results; fp16/fp32/int8 dots are fine).
    On a GPU this is always False and the dot runs natively in bf16 with fp32 accumulation.
    """
    return interpreting() and dtype == torch.bfloat16


def check_device(tensors: Iterable[tuple[str, torch.Tensor | None]]) -> torch.device:
    """All tensors on one device; CUDA, or CPU only under the interpreter. Returns that device."""
    device = None
    for name, t in tensors:
        if t is None:
            continue
        if device is None:
            device = t.device
            if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
                raise ValueError(
                    f"{name} is on {device}: Triton kernels need CUDA tensors "
                    "(CPU tensors only under TRITON_INTERPRET=1, for tests)"
                )
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} like the other inputs")
    if device is None:
        raise ValueError("no tensor inputs")
    return device


def check_dtype(name: str, t: torch.Tensor | None, allowed: Sequence[torch.dtype]) -> None:
    if t is not None and t.dtype not in allowed:
        raise ValueError(f"{name} must be one of {tuple(str(d) for d in allowed)}, got {t.dtype}")


def check_rows(name: str, t: torch.Tensor) -> None:
    """A 2D tensor must have a unit stride along its last dim (rows may be strided, e.g. a slice)."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2D, got shape {tuple(t.shape)}")
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must be contiguous along its last dim, got shape {tuple(t.shape)} "
                         f"and strides {t.stride()}")


def check_vector(name: str, t: torch.Tensor | None, length: int) -> None:
    """A (length,) tensor with unit stride (or None)."""
    if t is None:
        return
    if t.shape != (length,):
        raise ValueError(f"{name} must be ({length},), got {tuple(t.shape)}")
    if length > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous, got stride {t.stride()}")


# Triton's interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest even), which doubles
# the bf16 rounding error of every interpreted kernel. Kernels store through ``round_to`` so that under
# the interpreter bf16 results are rounded to nearest even by integer arithmetic; compiled for a GPU the
# branch is dead (a compile-time constant) and the native conversion is used.
_EMULATE_BF16_RTNE = tl.constexpr(interpreting())


@triton.jit
def round_to(y, dtype: tl.constexpr):
    """fp32 tensor ``y`` rounded to nearest even in ``dtype`` (see _EMULATE_BF16_RTNE)."""
    if _EMULATE_BF16_RTNE and dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return y.to(dtype)


def check_ids(name: str, ids: torch.Tensor, table: torch.Tensor) -> None:
    """ids: (tokens,) int32/int64, each a row of ``table`` (the dispatcher checks the same; the kernel
    checks again because a bad id would read outside the table on the GPU)."""
    if ids.dim() != 1:
        raise ValueError(f"{name} must be (tokens,), got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
        raise ValueError(
            f"{name} out of range: min {int(ids.min())}, max {int(ids.max())}, table has {table.shape[0]} rows"
        )
