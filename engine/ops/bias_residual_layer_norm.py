"""LayerNorm(x + bias + residual) with fp32 statistics: the tail of every BERT sub-layer.

    x:             (tokens, hidden), fp32/bf16/fp16
    residual:      (tokens, hidden) like x, or None (plain LayerNorm of x + bias: a final norm, the
                   first pre-norm)
    bias:          (hidden,) or None
    weight:        (hidden,)  LayerNorm gamma
    beta:          (hidden,) or None (a bias-free LayerNorm, ModernBERT's norm_bias=False)
    returns (tokens, hidden), same dtype as x

return_sum=True returns (normed, summed), summed = x + bias + residual rounded once to x's dtype: the
residual stream of a pre-norm layer (ModernBERT's ``x = x + attn(...); h = mlp_norm(x)``).
"""

from __future__ import annotations

import torch.nn.functional as F

from .registry import pick


def _check(x, bias, residual, weight, beta) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, hidden), got {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must match x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if weight is None:
        raise ValueError("weight (the LayerNorm gamma) is required")
    hidden = x.shape[1]
    for name, t in (("bias", bias), ("weight", weight), ("beta", beta)):
        if t is not None and t.shape != (hidden,):
            raise ValueError(f"{name} must be ({hidden},), got {tuple(t.shape)}")


def bias_residual_layer_norm_ref(x, bias, residual, weight, beta, eps: float = 1e-12, *, return_sum: bool = False):
    _check(x, bias, residual, weight, beta)
    y = x.float()
    if residual is not None:
        y = y + residual.float()
    if bias is not None:
        y = y + bias.float()
    out = F.layer_norm(y, (x.shape[1],), weight.float(), None if beta is None else beta.float(), eps).to(x.dtype)
    return (out, _fresh(y.to(x.dtype), x)) if return_sum else out


def _fresh(summed, x):
    """The sum as a tensor of its own even when nothing was added to x (the kernels write a new one)."""
    return summed.clone() if summed is x else summed


def bias_residual_layer_norm_torch(x, bias, residual, weight, beta, eps: float = 1e-12, *,
                                   return_sum: bool = False):
    _check(x, bias, residual, weight, beta)
    y = x
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    out = F.layer_norm(y, (x.shape[1],), weight, beta, eps)
    return (out, _fresh(y, x)) if return_sum else out


def bias_residual_layer_norm(x, bias, residual, weight, beta, eps: float = 1e-12, impl: str = "auto", *,
                             return_sum: bool = False):
    fn = pick("bias_residual_layer_norm", x.device.type, impl)
    # options are passed only when set, so a registered candidate written for BERT's post-norm still runs it
    if return_sum:
        return fn(x, bias, residual, weight, beta, eps, return_sum=True)
    return fn(x, bias, residual, weight, beta, eps)
