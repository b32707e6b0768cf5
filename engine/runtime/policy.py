"""Which device and precision bertrt uses when the caller says "auto"."""

from __future__ import annotations

import torch

from . import probe

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CANONICAL = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def choose_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is visible to torch")
    return device


def choose_precision(device: str, dtype: str | torch.dtype) -> str:
    """"auto": BF16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), FP16
    on older GPUs, else FP32 (on an AVX2-only CPU, BF16 GEMMs are emulated and slower than FP32)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in CANONICAL:
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return CANONICAL[dtype]
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'")
        return CANONICAL[DTYPES[dtype]]
    if torch.device(device).type == "cuda":
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        return "bfloat16" if major >= 8 else "float16"
    return "bfloat16" if probe.cpu().native_bf16 else "float32"
