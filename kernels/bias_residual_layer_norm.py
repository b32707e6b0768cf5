"""LayerNorm(x + bias + residual) in one pass (Triton), with fp32 statistics.

    x, residual:  (tokens, hidden) fp32/bf16/fp16, unit stride along hidden (rows may be strided);
                  residual may be None (LayerNorm of x + bias)
    bias:         (hidden,) or None
    weight, beta: (hidden,) LayerNorm gamma and beta (any of fp32/bf16/fp16, applied in fp32); beta may
                  be None (bias-free LayerNorm)
    eps:          float
    return_sum:   also return x + bias + residual (fp32 sum rounded once to x's dtype)
    returns (tokens, hidden), x's dtype, contiguous; (normed, summed) with return_sum

Same contract as ``bertrt.ops.bias_residual_layer_norm.bias_residual_layer_norm_ref``: the sum, mean,
variance (two-pass over the row held in registers, biased like ``F.layer_norm``) and the affine are
fp32; the result is rounded once to x's dtype. hidden <= 16384 (a whole row lives in registers).

Each program normalizes ROWS rows of BLOCK_H = next_pow2(hidden) lanes (masked). Autotuned on a GPU over
(ROWS, num_warps) keyed on (BLOCK_H, tokens rounded up to a power of two, dtype); a single config under
``TRITON_INTERPRET=1``.

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
    next_pow2,
    round_to,
)

MAX_HIDDEN = 16384


def _prune(configs, named_args, **kwargs):
    """Keep the register tile (ROWS * BLOCK_H fp32 values) within reason for the warps available."""
    block_h = kwargs.get("BLOCK_H", named_args.get("BLOCK_H"))
    kept = [c for c in configs if c.kwargs["ROWS"] * block_h <= 64 * 32 * c.num_warps]
    return kept or [min(configs, key=lambda c: c.kwargs["ROWS"] * 1000 - c.num_warps)]


_CONFIGS = autotune_configs([
    triton.Config({"ROWS": 1}, num_warps=4),  # first: the interpreter's
    triton.Config({"ROWS": 1}, num_warps=8),
    triton.Config({"ROWS": 1}, num_warps=16),
    triton.Config({"ROWS": 2}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=8),
    triton.Config({"ROWS": 8}, num_warps=8),
])


@triton.jit
def layer_norm_rows(y, mask_h, hidden, w_ptr, b_ptr, offs_h, eps, HAS_BETA: tl.constexpr):
    """Normalize each row of the fp32 tile y (ROWS, BLOCK_H; masked lanes hold 0) and apply gamma (and
    beta when HAS_BETA)."""
    mean = tl.sum(y, axis=1) / hidden
    diff = tl.where(mask_h[None, :], y - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / hidden
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    out = diff * rstd[:, None] * w[None, :]
    if HAS_BETA:
        out += tl.load(b_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    return out


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "BLOCK_H"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _bias_residual_layer_norm_kernel(
    x_ptr, bias_ptr, res_ptr, w_ptr, beta_ptr, out_ptr, sum_ptr,
    M, hidden, stride_xm, stride_rm, stride_om, eps,
    M_BUCKET,  # rounded token count: autotune key only
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BETA: tl.constexpr, WRITE_SUM: tl.constexpr,
    BLOCK_H: tl.constexpr, ROWS: tl.constexpr,
):
    offs_m = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    mask = (offs_m < M)[:, None] & mask_h[None, :]
    rows = offs_m.to(tl.int64)
    y = tl.load(x_ptr + rows[:, None] * stride_xm + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + rows[:, None] * stride_rm + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    if WRITE_SUM:  # the summed output is contiguous like out
        tl.store(sum_ptr + rows[:, None] * stride_om + offs_h[None, :], round_to(y, sum_ptr.dtype.element_ty),
                 mask=mask)
    out = layer_norm_rows(y, mask_h, hidden, w_ptr, beta_ptr, offs_h, eps, HAS_BETA)
    tl.store(out_ptr + rows[:, None] * stride_om + offs_h[None, :], round_to(out, out_ptr.dtype.element_ty), mask=mask)


def bias_residual_layer_norm(x, bias, residual, weight, beta, eps: float = 1e-12, *, return_sum: bool = False):
    """LayerNorm(x + bias + residual); shapes and semantics as in the module docstring.

    Raises ValueError naming the offending shape/dtype/device for invalid inputs. GPU speed unmeasured
    until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, hidden), got {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must match x {tuple(x.shape)}, got {tuple(residual.shape)}")
    for name, t in (("x", x), ("bias", bias), ("residual", residual), ("weight", weight), ("beta", beta)):
        check_dtype(name, t, FLOAT_DTYPES)
    check_device([("x", x), ("bias", bias), ("residual", residual), ("weight", weight), ("beta", beta)])
    check_rows("x", x)
    if residual is not None:
        check_rows("residual", residual)
    M, hidden = x.shape
    for name, t in (("bias", bias), ("weight", weight), ("beta", beta)):
        check_vector(name, t, hidden)
    if weight is None:
        raise ValueError("weight (the LayerNorm gamma) is required")
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden must be <= {MAX_HIDDEN} (one row per program in registers), got {tuple(x.shape)}")
    out = torch.empty(M, hidden, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out) if return_sum else None
    if M == 0 or hidden == 0:
        return (out, summed) if return_sum else out

    def grid(meta):
        return (triton.cdiv(M, meta["ROWS"]),)

    _bias_residual_layer_norm_kernel[grid](
        x, x if bias is None else bias, x if residual is None else residual, weight,
        weight if beta is None else beta, out, out if summed is None else summed,
        M, hidden, x.stride(0), x.stride(0) if residual is None else residual.stride(0), out.stride(0), float(eps),
        bucket(M),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, HAS_BETA=beta is not None,
        WRITE_SUM=return_sum, BLOCK_H=next_pow2(hidden),
    )
    return (out, summed) if return_sum else out
