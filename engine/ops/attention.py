"""Variable-length (padding-free) multi-head self-attention over packed sequences.

Layout, shared by every implementation:
    qkv:        (total_tokens, 3, heads, head_dim)  the fused QKV projection, reshaped; fp32/bf16/fp16
    cu_seqlens: (batch + 1,) int32, cu_seqlens[0] == 0, cu_seqlens[-1] == total_tokens
    max_seqlen: int, the longest sequence (kernels size their tiles with it)
    returns:    (total_tokens, heads, head_dim), same dtype as qkv

Bidirectional (encoder) attention: every token attends to every token of its own sequence only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .registry import pick


def _check(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"qkv must be (total_tokens, 3, heads, head_dim), got {tuple(qkv.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be (batch + 1,), got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")


def attention_ref(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None
) -> torch.Tensor:
    """Ground truth: one sequence at a time, in fp32."""
    _check(qkv, cu_seqlens)
    head_dim = qkv.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty(qkv.shape[0], qkv.shape[2], head_dim, dtype=torch.float32, device=qkv.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        q, k, v = qkv[start:end].float().unbind(1)  # each (len, heads, head_dim)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out.to(qkv.dtype)


def attention_torch(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None
) -> torch.Tensor:
    """Fallback: scatter into a padded batch and call PyTorch's SDPA with a key-padding mask."""
    _check(qkv, cu_seqlens)
    total, _, heads, head_dim = qkv.shape
    batch = cu_seqlens.numel() - 1
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    positions = torch.arange(max_seqlen, device=qkv.device)
    valid = positions[None, :] < lengths[:, None]  # (batch, max_seqlen)
    padded = qkv.new_zeros(batch, max_seqlen, 3, heads, head_dim)
    padded[valid] = qkv
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, max_seqlen, head_dim)
    mask = valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)[valid].reshape(total, heads, head_dim)


def attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Dispatch to the best (or the named) implementation for qkv's device."""
    return pick("attention", qkv.device.type, impl)(qkv, cu_seqlens, max_seqlen, scale)
