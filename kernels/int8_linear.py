"""INT8 GEMM with per-token activation scales, per-channel weight scales and a fused epilogue (Triton).

    x_q:     (tokens, in_features) int8           x ~= x_q * x_scale[:, None]
    x_scale: (tokens,) float (read as fp32)
    w_q:     (out_features, in_features) int8     w ~= w_q * w_scale[:, None]
    w_scale: (out_features,) float (read as fp32)
    bias:    (out_features,) float or None (added in fp32 after dequantization)
    activation: "none" | "gelu" | "gelu_tanh", applied after the bias
    out_dtype: torch.float32 | torch.float16 | torch.bfloat16
    returns (tokens, out_features) in out_dtype, contiguous

Same contract as ``bertrt.ops.int8_linear.int8_linear_ref``. ``tl.dot`` on int8 tiles accumulates in
int32 (exact: |acc| <= K * 127^2 < 2^31 for K < 133,000); the epilogue converts to fp32 and applies
``acc * x_scale * w_scale (+ bias)`` in the reference's order, then GELU, then one rounding to out_dtype.
Any strides are accepted (x_q and w_q are read through their strides; unit stride along in_features is
the fast layout).

Tiling: (BLOCK_M, BLOCK_N) output tiles walking K in BLOCK_K steps, launched in GROUP_M-row groups for L2
reuse. Autotuned on a GPU keyed on (tokens rounded up to a power of two, out_features, in_features, dtypes)
so a new batch size in a seen bucket reuses its config; a single config under ``TRITON_INTERPRET=1``.

GPU speed unmeasured until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU (int8
``tl.dot`` runs exactly in the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import FLOAT_DTYPES, autotune_configs, bucket, check_device, check_dtype, round_to
from .bias_gelu import gelu_fp32

ACTIVATIONS = ("none", "gelu", "gelu_tanh")
MAX_K = 133_000  # K * 127 * 127 must stay below 2^31 for the int32 accumulator


def _config(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


_CONFIGS = autotune_configs([
    _config(64, 64, 64, 4, 3),  # first: the interpreter's
    _config(16, 64, 128, 4, 4),
    _config(32, 64, 128, 4, 4),
    _config(32, 128, 128, 4, 4),
    _config(64, 128, 128, 4, 4),
    _config(128, 64, 64, 4, 4),
    _config(128, 128, 64, 8, 3),
    _config(128, 128, 128, 8, 3),
])  # 128x256 / 256x128 tiles were dropped: ptxas (sm_80) reported ~9 KB of spills with the GELU epilogue


def _prune(configs, named_args, **kwargs):
    """Drop token tiles much taller than the (bucketed) token count."""
    m_bucket = named_args["M_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= max(32, m_bucket)]
    return kept or configs[:1]


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _int8_linear_kernel(
    x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om,
    M_BUCKET,  # rounded token count: autotune key only
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,  # 0 none, 1 gelu (erf), 2 gelu (tanh)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped launch order: GROUP_M row-tiles share each column tile's weights while they are in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m

    # 64-bit scalar bases of this tile's rows/columns; the per-element offsets inside the tile stay 32-bit
    # (64-bit offset tiles cost registers and spill)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = pid_m * BLOCK_M + rm < M
    n_mask = pid_n * BLOCK_N + rn < N
    x_ptrs = x_ptr + (pid_m * BLOCK_M).to(tl.int64) * stride_xm + rm[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = (w_ptr + (pid_n * BLOCK_N).to(tl.int64) * stride_wn
              + rn[None, :] * stride_wn + offs_k[:, None] * stride_wk)  # (BLOCK_K, BLOCK_N) view of w.T

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < k_left), other=0)
        b = tl.load(w_ptrs, mask=n_mask[None, :] & (offs_k[:, None] < k_left), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # epilogue, fp32, in the reference's order: acc * x_scale * w_scale + bias, then the activation
    x_scale = tl.load(x_scale_ptr + pid_m * BLOCK_M + rm, mask=m_mask, other=0.0).to(tl.float32)
    w_scale = tl.load(w_scale_ptr + pid_n * BLOCK_N + rn, mask=n_mask, other=0.0).to(tl.float32)
    y = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + pid_n * BLOCK_N + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 1:
        y = gelu_fp32(y, False)
    elif ACTIVATION == 2:
        y = gelu_fp32(y, True)
    out_ptrs = (out_ptr + (pid_m * BLOCK_M).to(tl.int64) * stride_om + pid_n * BLOCK_N
                + rm[:, None] * stride_om + rn[None, :])
    tl.store(out_ptrs, round_to(y, out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32) -> torch.Tensor:
    """(x_q @ w_q.T) dequantized, + bias, activation; shapes and semantics as in the module docstring.

    Raises ValueError naming the offending shape/dtype/device for invalid inputs. GPU speed unmeasured
    until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
    """
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
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float32/float16/bfloat16, got {out_dtype}")
    for name, t in (("x_scale", x_scale), ("w_scale", w_scale), ("bias", bias)):
        check_dtype(name, t, FLOAT_DTYPES)
    check_device([("x_q", x_q), ("x_scale", x_scale), ("w_q", w_q), ("w_scale", w_scale), ("bias", bias)])
    M, K = x_q.shape
    N = w_q.shape[0]
    if K > MAX_K:
        raise ValueError(f"in_features must be <= {MAX_K} for an exact int32 accumulator, got x_q {tuple(x_q.shape)}")
    # the 1D vectors are indexed with unit stride; copying a strided one is cheap
    x_scale, w_scale = x_scale.contiguous(), w_scale.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = torch.empty(M, N, dtype=out_dtype, device=x_q.device)
    if M == 0 or N == 0:
        return out
    # K == 0 needs no special case: the K loop runs zero times and the epilogue sees acc == 0

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _int8_linear_kernel[grid](
        x_q, w_q, x_scale, w_scale, w_scale if bias is None else bias, out,
        M, N, K,
        x_q.stride(0), x_q.stride(1), w_q.stride(0), w_q.stride(1), out.stride(0),
        bucket(M),
        HAS_BIAS=bias is not None, ACTIVATION=ACTIVATIONS.index(activation),
    )
    return out
