"""LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]) in one pass (Triton).

    input_ids, token_type_ids, position_ids: (tokens,) int32 or int64 (packed, padding-free); the ids of
        a missing table may be None and are ignored
    word_embeddings:       (vocab, hidden)
    position_embeddings:   (max_positions, hidden) or None
    token_type_embeddings: (type_vocab, hidden) or None
        tables fp32/bf16/fp16, unit stride along hidden (rows may be strided)
    weight, bias:          (hidden,) LayerNorm gamma and beta (bias may be None)
    eps:                   float
    returns (tokens, hidden) in word_embeddings' dtype, contiguous

Same contract as ``bertrt.ops.embedding_layer_norm.embedding_layer_norm_ref``: the three gathered rows are
summed in fp32, normalized with fp32 statistics and rounded once. Out-of-range ids raise ValueError before
the launch (the same check as the reference; on CUDA it reads the ids' min/max, one device sync), so the
kernel never reads outside a table. hidden <= 16384.

Autotuned on a GPU over (ROWS, num_warps) keyed on (BLOCK_H, tokens rounded up to a power of two, dtype);
a single config under ``TRITON_INTERPRET=1``.

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
    check_ids,
    check_rows,
    check_vector,
    next_pow2,
    round_to,
)
from .bias_residual_layer_norm import MAX_HIDDEN, layer_norm_rows


def _prune(configs, named_args, **kwargs):
    block_h = kwargs.get("BLOCK_H", named_args.get("BLOCK_H"))
    kept = [c for c in configs if c.kwargs["ROWS"] * block_h <= 64 * 32 * c.num_warps]
    return kept or [min(configs, key=lambda c: c.kwargs["ROWS"] * 1000 - c.num_warps)]


_CONFIGS = autotune_configs([
    triton.Config({"ROWS": 1}, num_warps=4),  # first: the interpreter's
    triton.Config({"ROWS": 1}, num_warps=8),
    triton.Config({"ROWS": 2}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=4),
    triton.Config({"ROWS": 4}, num_warps=8),
])


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "BLOCK_H"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _embedding_layer_norm_kernel(
    ids_ptr, type_ids_ptr, pos_ids_ptr,
    word_ptr, pos_ptr, type_ptr, w_ptr, b_ptr, out_ptr,
    M, hidden, stride_word, stride_pos, stride_type, stride_om, eps,
    M_BUCKET,  # rounded token count: autotune key only
    HAS_POSITION: tl.constexpr, HAS_TYPE: tl.constexpr, HAS_BETA: tl.constexpr,
    BLOCK_H: tl.constexpr, ROWS: tl.constexpr,
):
    offs_m = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_mask = offs_m < M
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    mask = m_mask[:, None] & mask_h[None, :]
    # ids were range-checked by the wrapper; masked rows read row 0
    word_row = tl.load(ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    y = tl.load(word_ptr + word_row[:, None] * stride_word + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_POSITION:
        pos_row = tl.load(pos_ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
        y += tl.load(pos_ptr + pos_row[:, None] * stride_pos + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_TYPE:
        type_row = tl.load(type_ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
        y += tl.load(type_ptr + type_row[:, None] * stride_type + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    out = layer_norm_rows(y, mask_h, hidden, w_ptr, b_ptr, offs_h, eps, HAS_BETA)
    rows = offs_m.to(tl.int64)
    tl.store(out_ptr + rows[:, None] * stride_om + offs_h[None, :], round_to(out, out_ptr.dtype.element_ty), mask=mask)


def embedding_layer_norm(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    """Fused embedding gather + sum + LayerNorm; shapes and semantics as in the module docstring.

    Raises ValueError naming the offending shape/dtype/device (or out-of-range id) for invalid inputs.
    GPU speed unmeasured until run on a GPU; correctness verified under TRITON_INTERPRET=1 on CPU.
    """
    tables = tuple((name, t) for name, t in (
        ("word_embeddings", word_embeddings), ("position_embeddings", position_embeddings),
        ("token_type_embeddings", token_type_embeddings)) if t is not None)
    ids = (("input_ids", input_ids),)  # the ids of a missing table are ignored
    if token_type_embeddings is not None:
        ids += (("token_type_ids", token_type_ids),)
    if position_embeddings is not None:
        ids += (("position_ids", position_ids),)
    for name, t in tables:
        check_rows(name, t)
        check_dtype(name, t, FLOAT_DTYPES)
    hidden = word_embeddings.shape[1]
    for name, t in tables[1:]:
        if t.shape[1] != hidden:
            raise ValueError(f"{name} must have hidden size {hidden} like word_embeddings, got {tuple(t.shape)}")
    if weight is None:
        raise ValueError("weight (the LayerNorm gamma) is required")
    for name, t in (("weight", weight), ("bias", bias)):
        check_dtype(name, t, FLOAT_DTYPES)
    table_of = {"input_ids": word_embeddings, "token_type_ids": token_type_embeddings,
                "position_ids": position_embeddings}
    for name, t in ids:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor of ids when its table is given, got {type(t).__name__}")
    check_device([*tables, *ids, ("weight", weight), ("bias", bias)])
    check_vector("weight", weight, hidden)
    check_vector("bias", bias, hidden)
    for name, t in ids:
        check_ids(name, t, table_of[name])
    if len({t.shape for _, t in ids}) > 1:
        raise ValueError(f"{', '.join(n for n, _ in ids)} must have one shape, got "
                         + ", ".join(str(tuple(t.shape)) for _, t in ids))
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden must be <= {MAX_HIDDEN}, got word_embeddings {tuple(word_embeddings.shape)}")
    M = input_ids.shape[0]
    out = torch.empty(M, hidden, dtype=word_embeddings.dtype, device=word_embeddings.device)
    if M == 0 or hidden == 0:
        return out
    # strided 1D ids are rare; make them unit-stride rather than carry three more strides. A missing
    # table (and its ids) is replaced by the word table / input_ids, never read (HAS_* is off).
    has_position, has_type = position_embeddings is not None, token_type_embeddings is not None
    input_ids = input_ids.contiguous()
    position_ids = position_ids.contiguous() if has_position else input_ids
    token_type_ids = token_type_ids.contiguous() if has_type else input_ids
    position_embeddings = position_embeddings if has_position else word_embeddings
    token_type_embeddings = token_type_embeddings if has_type else word_embeddings

    def grid(meta):
        return (triton.cdiv(M, meta["ROWS"]),)

    _embedding_layer_norm_kernel[grid](
        input_ids, token_type_ids, position_ids,
        word_embeddings, position_embeddings, token_type_embeddings, weight, weight if bias is None else bias, out,
        M, hidden, word_embeddings.stride(0), position_embeddings.stride(0), token_type_embeddings.stride(0),
        out.stride(0), float(eps),
        bucket(M),
        HAS_POSITION=has_position, HAS_TYPE=has_type, HAS_BETA=bias is not None,
        BLOCK_H=next_pow2(hidden),
    )
    return out
