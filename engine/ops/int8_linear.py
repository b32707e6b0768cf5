"""INT8 GEMM with per-token activation scales, per-channel weight scales and a fused epilogue.

    x_q:     (tokens, in_features) int8     activations, symmetric per-token quantization
    x_scale: (tokens,) float32              x ~= x_q * x_scale[:, None]
    w_q:     (out_features, in_features) int8, symmetric per-output-channel quantization
    w_scale: (out_features,) float32        w ~= w_q * w_scale[:, None]
    bias:    (out_features,) or None, added after dequantization
    activation: "none" | "gelu" | "gelu_tanh", applied after the bias
    returns (tokens, out_features) in out_dtype

The int32 accumulation is exact; the only error is the final float epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick

ACTIVATIONS = ("none", "gelu", "gelu_tanh")


def _check(x_q, x_scale, w_q, w_scale, bias, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise ValueError(f"x_q and w_q must be int8, got {x_q.dtype} and {w_q.dtype}")
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"x_q (tokens, K) and w_q (N, K) must agree on K: {tuple(x_q.shape)} vs {tuple(w_q.shape)}")
    if x_scale.shape != (x_q.shape[0],) or w_scale.shape != (w_q.shape[0],):
        raise ValueError(
            f"x_scale must be ({x_q.shape[0]},) and w_scale ({w_q.shape[0]},), got "
            f"{tuple(x_scale.shape)} and {tuple(w_scale.shape)}"
        )
    if bias is not None and bias.shape != (w_q.shape[0],):
        raise ValueError(f"bias must be ({w_q.shape[0]},), got {tuple(bias.shape)}")


def _epilogue(acc: torch.Tensor, x_scale, w_scale, bias, activation) -> torch.Tensor:
    y = acc * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    if activation == "gelu":
        y = F.gelu(y)
    elif activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    return y


def int8_linear_ref(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32):
    """Exact integer product (in float64, exact for K * 127^2 < 2^53), then the fp32 epilogue."""
    _check(x_q, x_scale, w_q, w_scale, bias, activation)
    acc = (x_q.double() @ w_q.double().t()).float()
    return _epilogue(acc, x_scale, w_scale, bias, activation).to(out_dtype)


def int8_linear_torch(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32):
    """torch._int_mm where it exists for the shape (CUDA, M > 16), else an fp32 product (exact below 2^24)."""
    _check(x_q, x_scale, w_q, w_scale, bias, activation)
    if x_q.is_cuda and x_q.shape[0] > 16 and x_q.shape[1] % 8 == 0 and w_q.shape[0] % 8 == 0:
        acc = torch._int_mm(x_q, w_q.t()).float()
    else:
        acc = x_q.float() @ w_q.float().t()
    return _epilogue(acc, x_scale, w_scale, bias, activation).to(out_dtype)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row INT8: x (tokens, K) -> (x_q int8 (tokens, K), scale float32 (tokens,))."""
    amax = x.float().abs().amax(dim=-1).clamp_min(1e-8)
    scale = amax / 127.0
    x_q = torch.round(x.float() / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return x_q, scale


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32, impl="auto"):
    return pick("int8_linear", x_q.device.type, impl)(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)
