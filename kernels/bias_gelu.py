"""GELU(x + bias) in one pass (Triton): exact (erf) or tanh approximation, fp32 math.

    x:    (tokens, features) fp32/bf16/fp16, unit stride along features (rows may be strided)
    bias: (features,) fp32/bf16/fp16 (loaded and added in fp32), or None
    approximate: "none" (erf) | "tanh"
    gated:  GeGLU: features = 2 * I, returns (tokens, I) = gelu(x[:, :I] + b[:I]) * (x[:, I:] + b[I:])
    returns (tokens, features), x's dtype, contiguous

Same contract as ``bertrt.ops.bias_gelu.bias_gelu_ref``: the sum and the GELU are computed in fp32 and
rounded once to x's dtype. tanh is evaluated as ``1 - 2 / (exp(2z) + 1)`` with z clamped to [-10, 10]
(tanh saturates to +-1 in fp32 there; the clamp keeps exp finite).

Tiles of (BLOCK_M tokens, BLOCK_N features); autotuned on a GPU keyed on (tokens rounded up to a power of
two, features rounded up to a power of two, dtype); a single config under ``TRITON_INTERPRET=1``.

GPU speed unmeasured until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    FLOAT_DTYPES,
    autotune_configs,
    bucket,
    check_device,
    check_dtype,
    check_rows,
    check_vector,
    round_to,
)

APPROXIMATIONS = ("none", "tanh")

_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 128}, num_warps=4),  # first: the interpreter's
    triton.Config({"BLOCK_M": 8, "BLOCK_N": 256}, num_warps=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 256}, num_warps=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 256}, num_warps=8),
    triton.Config({"BLOCK_M": 4, "BLOCK_N": 1024}, num_warps=4),
    triton.Config({"BLOCK_M": 8, "BLOCK_N": 1024}, num_warps=8),
])


@triton.jit
def gelu_fp32(y, TANH: tl.constexpr):
    """GELU of an fp32 tensor: erf form, or the tanh approximation (shared with the INT8 GEMM epilogue)."""
    if TANH:
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)  # sqrt(2/pi) * (y + 0.044715 y^3)
        z = tl.minimum(tl.maximum(z, -10.0), 10.0)  # tanh(+-10) rounds to +-1 in fp32; keeps exp finite
        t = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
        return 0.5 * y * (1.0 + t)
    else:
        return 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N_BUCKET"])
@triton.jit
def _bias_gelu_kernel(
    x_ptr, bias_ptr, out_ptr,
    M, N, stride_xm, stride_om,
    M_BUCKET, N_BUCKET,  # rounded shapes: autotune key only
    HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    mask = m_mask[:, None] & n_mask[None, :]
    rows = offs_m.to(tl.int64)
    y = tl.load(x_ptr + rows[:, None] * stride_xm + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        y = y + b[None, :]
    y = gelu_fp32(y, TANH)
    tl.store(out_ptr + rows[:, None] * stride_om + offs_n[None, :], round_to(y, out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N_BUCKET"])
@triton.jit
def _gated_gelu_kernel(
    x_ptr, bias_ptr, out_ptr,
    M, N, stride_xm, stride_om,  # N: output features (half of x's)
    M_BUCKET, N_BUCKET,  # rounded shapes: autotune key only
    HAS_BIAS: tl.constexpr, TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    mask = (offs_m < M)[:, None] & n_mask[None, :]
    rows = offs_m.to(tl.int64)
    value_ptrs = x_ptr + rows[:, None] * stride_xm + offs_n[None, :]
    y = tl.load(value_ptrs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(value_ptrs + N, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        g = g + tl.load(bias_ptr + N + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y = gelu_fp32(y, TANH) * g
    tl.store(out_ptr + rows[:, None] * stride_om + offs_n[None, :], round_to(y, out_ptr.dtype.element_ty), mask=mask)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", *,
              gated: bool = False) -> torch.Tensor:
    """GELU(x + bias); shapes and semantics as in the module docstring.

    Raises ValueError naming the offending shape/dtype/device for invalid inputs. GPU speed unmeasured
    until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
    """
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS}, got {approximate!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, features), got {tuple(x.shape)}")
    check_dtype("x", x, FLOAT_DTYPES)
    check_dtype("bias", bias, FLOAT_DTYPES)
    check_device([("x", x), ("bias", bias)])
    check_rows("x", x)
    check_vector("bias", bias, x.shape[1])
    if gated and x.shape[1] % 2:
        raise ValueError(f"gated bias_gelu needs an even last dim (activated half, gate half), got {tuple(x.shape)}")
    M, N = x.shape[0], x.shape[1] // 2 if gated else x.shape[1]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))

    (_gated_gelu_kernel if gated else _bias_gelu_kernel)[grid](
        x, x if bias is None else bias, out,
        M, N, x.stride(0), out.stride(0),
        bucket(M), bucket(N),
        HAS_BIAS=bias is not None, TANH=approximate == "tanh",
    )
    return out
