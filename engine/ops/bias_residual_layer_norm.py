"""LayerNorm(x + bias + residual) with fp32 statistics: the tail of every BERT sub-layer.

    x, residual:   (tokens, hidden), fp32/bf16/fp16
    bias:          (hidden,) or None
    weight, beta:  (hidden,)  LayerNorm gamma and beta
    returns (tokens, hidden), same dtype as x
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick


def _check(x, bias, residual, weight, beta) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, hidden), got {tuple(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(f"residual must match x {tuple(x.shape)}, got {tuple(residual.shape)}")
    hidden = x.shape[1]
    for name, t in (("bias", bias), ("weight", weight), ("beta", beta)):
        if t is not None and t.shape != (hidden,):
            raise ValueError(f"{name} must be ({hidden},), got {tuple(t.shape)}")


def bias_residual_layer_norm_ref(x, bias, residual, weight, beta, eps: float = 1e-12) -> torch.Tensor:
    _check(x, bias, residual, weight, beta)
    y = x.float() + residual.float()
    if bias is not None:
        y = y + bias.float()
    return F.layer_norm(y, (x.shape[1],), weight.float(), beta.float(), eps).to(x.dtype)


def bias_residual_layer_norm_torch(x, bias, residual, weight, beta, eps: float = 1e-12) -> torch.Tensor:
    _check(x, bias, residual, weight, beta)
    y = x + residual if bias is None else x + bias + residual
    return F.layer_norm(y, (x.shape[1],), weight, beta, eps)


def bias_residual_layer_norm(x, bias, residual, weight, beta, eps: float = 1e-12, impl: str = "auto"):
    return pick("bias_residual_layer_norm", x.device.type, impl)(x, bias, residual, weight, beta, eps)
