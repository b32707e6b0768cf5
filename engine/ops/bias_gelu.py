"""GELU(x + bias), exact (erf) or tanh approximation; optionally gated (GeGLU).

    x:    (tokens, features), fp32/bf16/fp16
    bias: (features,) same dtype as x, or None
    returns (tokens, features), same dtype as x

gated=True (GeGLU, ModernBERT's MLP): features = 2 * I, the first half is activated and the second
half is the gate (transformers' ``input, gate = Wi(x).chunk(2, -1); act(input) * gate``):

    returns (tokens, I) = gelu(x[:, :I] + bias[:I]) * (x[:, I:] + bias[I:])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick

APPROXIMATIONS = ("none", "tanh")


def _check(x: torch.Tensor, bias: torch.Tensor | None, approximate: str, gated: bool = False) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, features), got {tuple(x.shape)}")
    if bias is not None and bias.shape != (x.shape[1],):
        raise ValueError(f"bias must be ({x.shape[1]},), got {tuple(bias.shape)}")
    if gated and x.shape[1] % 2:
        raise ValueError(f"gated bias_gelu needs an even last dim (activated half, gate half), got {tuple(x.shape)}")


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", *,
                  gated: bool = False) -> torch.Tensor:
    _check(x, bias, approximate, gated)
    y = x.float() if bias is None else x.float() + bias.float()
    if gated:
        half = x.shape[1] // 2
        return (F.gelu(y[:, :half], approximate=approximate) * y[:, half:]).to(x.dtype)
    return F.gelu(y, approximate=approximate).to(x.dtype)


def bias_gelu_torch(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", *,
                    gated: bool = False) -> torch.Tensor:
    _check(x, bias, approximate, gated)
    y = x if bias is None else x + bias
    if gated:
        value, gate = y.chunk(2, dim=-1)
        return F.gelu(value, approximate=approximate) * gate
    return F.gelu(y, approximate=approximate)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", impl: str = "auto", *,
    gated: bool = False,
) -> torch.Tensor:
    fn = pick("bias_gelu", x.device.type, impl)
    # options are passed only when set, so a registered candidate written for plain GELU still runs BERT
    return fn(x, bias, approximate, gated=True) if gated else fn(x, bias, approximate)
