"""Flash-style variable-length self-attention forward (Triton), over packed sequences without padding.

    qkv:        (total_tokens, 3, heads, head_dim) fp16/bf16/fp32, unit stride along head_dim
    cu_seqlens: (batch + 1,) int32 on the same device, cu_seqlens[0] == 0, cu_seqlens[-1] == total_tokens
    max_seqlen: int >= 1, sizes the launch grid only (see below)
    scale:      softmax scale, default 1/sqrt(head_dim)
    returns:    (total_tokens, heads, head_dim), qkv's dtype, contiguous

Same contract as ``bertrt.ops.attention.attention_ref``. Bidirectional (encoder) attention: each token
attends to every token of its own sequence.

Algorithm: online softmax (FlashAttention-2 forward). One program owns a (BLOCK_M query rows, sequence,
head) tile; it streams the sequence's keys/values in BLOCK_N blocks, keeping a running max and sum in fp32
and an fp32 output accumulator; scores are computed in base 2 (``exp2``) with log2(e) folded into the
scale. ``tl.dot`` takes fp16/bf16 operands with fp32 accumulation; fp32 inputs use IEEE fp32 dots (not
TF32), so the fp32 path is as accurate as the reference. head_dim 32/64/80/128 (any head_dim <= 256):
the head dim is padded to the next power of two (BLOCK_D) and masked.

No work on padding: the program reads its sequence's start/end from cu_seqlens and loops only over query
blocks and key blocks inside that sequence; a program whose query block lies past the sequence's end does
nothing. The 1D grid is ``cdiv(max_seqlen, BLOCK_M) * batch * heads`` programs (one axis, so large
batch * heads never hits CUDA's 65535 limit on grid axes 1 and 2); query blocks step by the grid's
query-block count, so a ``max_seqlen`` smaller than the true longest sequence costs speed, never
correctness (no device sync is needed to validate it).

cu_seqlens' contents are trusted (as in flash-attn): checking them would cost a device sync per call.

Autotuning: over (BLOCK_M, BLOCK_N, num_warps, num_stages), keyed on ``max_seqlen`` rounded up to a power
of two (at least 16), head_dim and the dtype; varied sequence lengths therefore do not retune every call.
fp16/bf16 and fp32 have separate config families (IEEE fp32 dots run on FMA units and need smaller tiles);
configs that spill registers are pruned (rules from ``python -m bertrt.kernels._compile_check``, which
compiles every kernel for sm_80/sm_90 without a GPU). Under ``TRITON_INTERPRET=1`` a single config is used.

Options (as in ``attention_ref``; constexpr flags, so plain attention compiles without them):
* ``rel_bias`` (heads, 2 * max_seqlen - 1) fp32: loaded per (query, key) tile at j - i + max_seqlen - 1 and
  added (times log2(e)) to the base-2 scores;
* ``window`` w: a query block visits only the key blocks overlapping [m_start - w, m_end + w) (no work
  outside the band), keys outside |i - j| <= w are masked; rows with every key so far masked keep a zero
  max for the exponentials, so nothing becomes NaN;
* ``rotary`` (cos, sin) fp32 (P, head_dim / 2): q and k are rotated in fp32 as they are loaded (the
  partner half is a second load with the halves swapped), then rounded to the dot dtype.

GPU speed unmeasured until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU (fp16, fp32;
bf16 with the dot operands upcast to fp32 because the interpreter's bf16 ``tl.dot`` is broken, see
``_utils.dot_upcast``, so the native bf16 dot has only been compiled, not run).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..errors import check_limits
from ._utils import FLOAT_DTYPES, autotune_configs, bucket, check_device, dot_upcast, next_pow2, round_to

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256
# What this kernel is built for beyond the op's contract (registry.limit_reason reads it)
LIMITS = {"attention": {"head_dim": MAX_HEAD_DIM}}


# fp16/bf16: tensor-core tiles. The first config is the one the interpreter uses, for every dtype.
_HALF_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
]
# fp32 with IEEE dots (FMA, no tensor cores) needs far more registers per tile: smaller tiles
_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=1),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=1),
]
_CONFIGS = autotune_configs(_HALF_CONFIGS + _FP32_CONFIGS)


def _prune(configs, named_args, **kwargs):
    """Keep the dtype's config family; drop query tiles much taller than the longest sequence (all-masked
    rows are wasted work) and tiles that spill registers. The register rules were set from ptxas reports
    of the AOT-compiled kernels for sm_80 (``python -m bertrt.kernels._compile_check``): fp16/bf16 tiles
    spill once the fp32 accumulator + score tile exceed ~96 values a thread, IEEE fp32 tiles ~40."""
    seq_bucket = named_args["SEQ_BUCKET"]
    window = named_args["window"] if kwargs.get("HAS_WINDOW", named_args.get("HAS_WINDOW")) else None
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
    fp32 = kwargs.get("DOT_PRECISION", named_args.get("DOT_PRECISION")) == "ieee"
    family = {id(c) for c in (_FP32_CONFIGS if fp32 else _HALF_CONFIGS)}

    def fits(c):
        m, n, threads = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], 32 * c.num_warps
        if id(c) not in family or m > max(64, seq_bucket if window is None else min(seq_bucket, window)):
            return False
        return (m * block_d + m * n) / threads <= (40 if fp32 else 96)

    return [c for c in configs if fits(c)] or configs[:1]


@triton.jit
def _load_rotated(base, offs_t, offs_d, t_mask, d_mask, cos_ptr, sin_ptr, stride_t, ROWS: tl.constexpr,
                  HALF: tl.constexpr, UPCAST: tl.constexpr):
    """A (tokens, BLOCK_D) tile (ROWS) or its transpose (BLOCK_D, tokens), rotate-half rotary applied in
    fp32 at the tokens' positions offs_t, rounded back to the input dtype unless UPCAST."""
    partner = tl.where(offs_d < HALF, offs_d + HALF, offs_d - HALF)
    column = tl.where(offs_d < HALF, offs_d, offs_d - HALF)
    sign = tl.where(offs_d < HALF, -1.0, 1.0)
    if ROWS:
        mask = t_mask[:, None] & d_mask[None, :]
        x = tl.load(base + offs_t[:, None] * stride_t + offs_d[None, :], mask=mask, other=0.0)
        y = tl.load(base + offs_t[:, None] * stride_t + partner[None, :], mask=mask, other=0.0)
        table = offs_t[:, None] * HALF + column[None, :]
        sign = sign[None, :]
    else:
        mask = d_mask[:, None] & t_mask[None, :]
        x = tl.load(base + offs_t[None, :] * stride_t + offs_d[:, None], mask=mask, other=0.0)
        y = tl.load(base + offs_t[None, :] * stride_t + partner[:, None], mask=mask, other=0.0)
        table = offs_t[None, :] * HALF + column[:, None]
        sign = sign[:, None]
    cos = tl.load(cos_ptr + table, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + table, mask=mask, other=0.0)
    rotated = x.to(tl.float32) * cos + sign * y.to(tl.float32) * sin
    return rotated if UPCAST else rotated.to(x.dtype)


@triton.autotune(configs=_CONFIGS, key=["SEQ_BUCKET", "HEAD_DIM", "HAS_BIAS", "HAS_WINDOW", "HAS_ROTARY"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attention_fwd_kernel(
    qkv_ptr, out_ptr, cu_seqlens_ptr,
    max_seqlen, qk_scale,
    stride_qkv_t, stride_qkv_s, stride_qkv_h,
    stride_out_t, stride_out_h,
    SEQ_BUCKET,  # rounded max_seqlen: the autotune key only, unused in the body
    bias_ptr, bias_max_seqlen, window, cos_ptr, sin_ptr,  # options; unused unless their flag is set
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ROTARY: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    num_m = tl.cdiv(max_seqlen, BLOCK_M)
    pid = tl.program_id(0)
    pid_m = pid % num_m
    pid_bh = pid // num_m
    seq = pid_bh // HEADS
    head = pid_bh % HEADS

    start = tl.load(cu_seqlens_ptr + seq)
    seqlen = tl.load(cu_seqlens_ptr + seq + 1) - start

    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    # 64-bit scalar bases for the sequence and head; the per-element tile offsets stay 32-bit (fewer registers)
    q_base = qkv_ptr + start.to(tl.int64) * stride_qkv_t + head * stride_qkv_h
    k_base = q_base + stride_qkv_s
    v_base = q_base + 2 * stride_qkv_s
    o_base = out_ptr + start.to(tl.int64) * stride_out_t + head * stride_out_h

    # Query blocks of this sequence: pid_m, pid_m + num_m, ... (one block unless max_seqlen was too small).
    for m_start in range(pid_m * BLOCK_M, seqlen, num_m * BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        m_mask = offs_m < seqlen
        if HAS_ROTARY:
            q = _load_rotated(q_base, offs_m, offs_d, m_mask, d_mask, cos_ptr, sin_ptr, stride_qkv_t,
                              ROWS=True, HALF=HEAD_DIM // 2, UPCAST=UPCAST)
        else:
            q = tl.load(q_base + offs_m[:, None] * stride_qkv_t + offs_d[None, :],
                        mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        n_lo = 0
        n_hi = seqlen
        if HAS_WINDOW:  # only the key blocks that overlap the band [m_start - window, m_start + BLOCK_M + window)
            n_lo = tl.maximum(m_start - window, 0) // BLOCK_N * BLOCK_N
            n_hi = tl.minimum(m_start + BLOCK_M + window, seqlen)
        for n_start in range(n_lo, n_hi, BLOCK_N):
            offs_n = n_start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < seqlen
            # K loaded transposed: (BLOCK_D, BLOCK_N)
            if HAS_ROTARY:
                k = _load_rotated(k_base, offs_n, offs_d, n_mask, d_mask, cos_ptr, sin_ptr, stride_qkv_t,
                                  ROWS=False, HALF=HEAD_DIM // 2, UPCAST=UPCAST)
            else:
                k = tl.load(k_base + offs_n[None, :] * stride_qkv_t + offs_d[:, None],
                            mask=n_mask[None, :] & d_mask[:, None], other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_qkv_t + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) fp32, base 2
            keep = n_mask[None, :]
            if HAS_BIAS:
                offset = offs_n[None, :] - offs_m[:, None] + bias_max_seqlen - 1
                bias = tl.load(bias_ptr + head * (2 * bias_max_seqlen - 1) + offset,
                               mask=m_mask[:, None] & n_mask[None, :], other=0.0)
                s += bias * 1.4426950408889634  # into the base-2 domain of the scores
            if HAS_WINDOW:
                distance = offs_n[None, :] - offs_m[:, None]
                keep = keep & (distance <= window) & (distance >= -window)
            s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_ref = m_new
            if HAS_WINDOW:  # a row may have no key yet in its window: exponentiate against 0, not -inf
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_ref)
            p = tl.math.exp2(s - m_ref[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        if HAS_WINDOW:  # rows past the sequence may have seen no key (never stored)
            l_i = tl.where(l_i == 0.0, 1.0, l_i)
        acc = acc / l_i[:, None]
        tl.store(o_base + offs_m[:, None] * stride_out_t + offs_d[None, :],
                 round_to(acc, out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def attention(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, *,
    rel_bias: torch.Tensor | None = None, window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Varlen attention over packed sequences; shapes and semantics as in the module docstring.

    Raises ValueError naming the offending shape/dtype/device for invalid inputs. GPU speed unmeasured
    until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
    """
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must be (total_tokens, 3, heads, head_dim), got {tuple(qkv.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be (batch + 1,), got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if qkv.dtype not in FLOAT_DTYPES:
        raise ValueError(f"qkv must be float32/float16/bfloat16, got {qkv.dtype}")
    check_device([("qkv", qkv), ("cu_seqlens", cu_seqlens)])
    total, _, heads, head_dim = qkv.shape
    check_limits("triton", LIMITS["attention"], head_dim=head_dim)
    if head_dim > 1 and qkv.stride(3) != 1:
        raise ValueError(f"qkv must be contiguous along head_dim, got strides {qkv.stride()}")
    if cu_seqlens.numel() > 1 and cu_seqlens.stride(0) != 1:
        raise ValueError(f"cu_seqlens must be contiguous, got stride {cu_seqlens.stride()}")
    max_seqlen = int(max_seqlen)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    rel_bias, window, cos, sin = _check_options(qkv, max_seqlen, rel_bias, window, rotary)

    out = torch.empty(total, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    batch = cu_seqlens.numel() - 1
    if total == 0 or heads == 0:
        return out
    if max_seqlen < 1:
        raise ValueError(f"max_seqlen must be >= 1 for {total} tokens, got {max_seqlen}")

    def grid(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]) * batch * heads,)

    _attention_fwd_kernel[grid](
        qkv, out, cu_seqlens,
        max_seqlen, scale * LOG2E,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        out.stride(0), out.stride(1),
        bucket(max_seqlen),
        out if rel_bias is None else rel_bias, max_seqlen, 0 if window is None else window,
        out if cos is None else cos, out if sin is None else sin,
        HEADS=heads, HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)),
        UPCAST=dot_upcast(qkv.dtype), DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        HAS_BIAS=rel_bias is not None, HAS_WINDOW=window is not None, HAS_ROTARY=cos is not None,
    )
    return out


def _check_options(qkv, max_seqlen, rel_bias, window, rotary):
    """The options' shapes and dtypes (ValueError naming the bad one) -> contiguous fp32 rel_bias, window,
    cos, sin (None where unset). Unused options are passed to the kernel as a dummy pointer."""
    heads, head_dim = qkv.shape[2], qkv.shape[3]
    if rel_bias is not None:
        if rel_bias.shape != (heads, 2 * max_seqlen - 1) or rel_bias.dtype != torch.float32:
            raise ValueError(f"rel_bias must be float32 (heads, 2 * max_seqlen - 1) = {(heads, 2 * max_seqlen - 1)},"
                             f" got {rel_bias.dtype} {tuple(rel_bias.shape)}")
        check_device([("qkv", qkv), ("rel_bias", rel_bias)])
        rel_bias = rel_bias.contiguous()
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ValueError(f"window must be None or an int >= 0, got {window!r}")
    cos = sin = None
    if rotary is not None:
        if len(rotary) != 2 or head_dim % 2:
            raise ValueError(f"rotary must be a pair (cos, sin) and head_dim even, got head_dim {head_dim}")
        for name, t in zip(("cos", "sin"), rotary):
            if t.dim() != 2 or t.shape[1] != head_dim // 2 or t.shape[0] < max_seqlen or t.dtype != torch.float32:
                raise ValueError(f"rotary {name} must be float32 (>= max_seqlen {max_seqlen}, {head_dim // 2}), "
                                 f"got {t.dtype} {tuple(t.shape)}")
            check_device([("qkv", qkv), (f"rotary {name}", t)])
        cos, sin = (t.contiguous() for t in rotary)
    return rel_bias, window, cos, sin
