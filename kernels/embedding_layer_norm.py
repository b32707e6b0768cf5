"""LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]) in one pass (Triton).

    input_ids, token_type_ids, position_ids: (tokens,) int32 or int64 (packed, padding-free)
    word_embeddings:       (vocab, hidden)
    position_embeddings:   (max_positions, hidden)
    token_type_embeddings: (type_vocab, hidden)
        tables fp32/bf16/fp16, unit stride along hidden (rows may be strided)
    weight, bias:          (hidden,) LayerNorm gamma and beta
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
    BLOCK_H: tl.constexpr, ROWS: tl.constexpr,
):
    offs_m = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_mask = offs_m < M
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < hidden
    mask = m_mask[:, None] & mask_h[None, :]
    # ids were range-checked by the wrapper; masked rows read row 0
    word_row = tl.load(ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    type_row = tl.load(type_ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    pos_row = tl.load(pos_ids_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    y = tl.load(word_ptr + word_row[:, None] * stride_word + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    y += tl.load(pos_ptr + pos_row[:, None] * stride_pos + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    y += tl.load(type_ptr + type_row[:, None] * stride_type + offs_h[None, :], mask=mask, other=0.0).to(tl.float32)
    out = layer_norm_rows(y, mask_h, hidden, w_ptr, b_ptr, offs_h, eps)
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
    tables = (("word_embeddings", word_embeddings), ("position_embeddings", position_embeddings),
              ("token_type_embeddings", token_type_embeddings))
    ids = (("input_ids", input_ids), ("token_type_ids", token_type_ids), ("position_ids", position_ids))
    for name, t in tables:
        check_rows(name, t)
        check_dtype(name, t, FLOAT_DTYPES)
    hidden = word_embeddings.shape[1]
    for name, t in tables[1:]:
        if t.shape[1] != hidden:
            raise ValueError(f"{name} must have hidden size {hidden} like word_embeddings, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            raise ValueError(f"{name} is required")
        check_dtype(name, t, FLOAT_DTYPES)
    check_device([*tables, *ids, ("weight", weight), ("bias", bias)])
    check_vector("weight", weight, hidden)
    check_vector("bias", bias, hidden)
    check_ids("input_ids", input_ids, word_embeddings)
    check_ids("token_type_ids", token_type_ids, token_type_embeddings)
    check_ids("position_ids", position_ids, position_embeddings)
    if not (input_ids.shape == token_type_ids.shape == position_ids.shape):
        raise ValueError(
            "input_ids, token_type_ids and position_ids must have one shape, got "
            f"{tuple(input_ids.shape)}, {tuple(token_type_ids.shape)}, {tuple(position_ids.shape)}"
        )
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden must be <= {MAX_HIDDEN}, got word_embeddings {tuple(word_embeddings.shape)}")
    M = input_ids.shape[0]
    out = torch.empty(M, hidden, dtype=word_embeddings.dtype, device=word_embeddings.device)
    if M == 0 or hidden == 0:
        return out
    # strided 1D ids are rare; make them unit-stride rather than carry three more strides
    input_ids, token_type_ids, position_ids = (t.contiguous() for t in (input_ids, token_type_ids, position_ids))

    def grid(meta):
        return (triton.cdiv(M, meta["ROWS"]),)

    _embedding_layer_norm_kernel[grid](
        input_ids, token_type_ids, position_ids,
        word_embeddings, position_embeddings, token_type_embeddings, weight, bias, out,
        M, hidden, word_embeddings.stride(0), position_embeddings.stride(0), token_type_embeddings.stride(0),
        out.stride(0), float(eps),
        bucket(M),
        BLOCK_H=next_pow2(hidden),
    )
    return out
