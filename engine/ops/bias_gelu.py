"""GELU(x + bias), exact (erf) or tanh approximation.

    x:    (tokens, features), fp32/bf16/fp16
    bias: (features,) same dtype as x, or None
    returns (tokens, features), same dtype as x
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick

APPROXIMATIONS = ("none", "tanh")


def _check(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, features), got {tuple(x.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias must be ({x.shape[1]},), got {tuple(bias.shape)}")


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    _check(x, bias, approximate)
    y = x.float() if bias is None else x.float() + bias.float()
    return F.gelu(y, approximate=approximate).to(x.dtype)


def bias_gelu_torch(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    _check(x, bias, approximate)
    return F.gelu(x if bias is None else x + bias, approximate=approximate)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", impl: str = "auto"
) -> torch.Tensor:
    return pick("bias_gelu", x.device.type, impl)(x, bias, approximate)
