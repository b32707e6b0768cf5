"""Variable-length (padding-free) multi-head self-attention over packed sequences.

Layout, shared by every implementation:
    qkv:        (total_tokens, 3, heads, head_dim)  the fused QKV projection, reshaped; fp32/bf16/fp16
    cu_seqlens: (batch + 1,) int32, cu_seqlens[0] == 0, cu_seqlens[-1] == total_tokens
    max_seqlen: int, the longest sequence (kernels size their tiles with it)
    returns:    (total_tokens, heads, head_dim), same dtype as qkv

Bidirectional (encoder) attention: every token attends to every token of its own sequence only.
i and j below are a query's and a key's positions inside their own sequence (0-based).

Options (keyword-only; they combine, e.g. ModernBERT's local layers use rotary and window together):
    rel_bias: None or fp32 (heads, 2 * max_seqlen - 1): score(h, i, j) += rel_bias[h, j - i + max_seqlen - 1]
              (MPNet's relative position bias; the caller computes the bucketed table)
    window:   None or int w >= 0: query i sees key j only if |i - j| <= w (ModernBERT's local layers);
              kernels skip the key tiles outside the band, so long sequences cost ~linear time
    rotary:   None or (cos, sin), each fp32 (P, head_dim // 2), P >= max_seqlen: rotary position embedding of
              q and k at position p, rotate-half pairing: for k < d/2, x1 = x[k], x2 = x[k + d/2],
              out[k] = x1 cos[p, k] - x2 sin[p, k], out[k + d/2] = x2 cos[p, k] + x1 sin[p, k]; v untouched
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from .registry import pick

# Query rows per block of the block-local (windowed) torch path: keys per block are rows + 2 * window.
_LOCAL_BLOCK = 128


def _check(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int | None = None,
                 rel_bias: torch.Tensor | None = None, window: int | None = None,
                 rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """The op's contract, checked once for every implementation's glue: raises InputError naming the problem.
    rel_bias and rotary are fp32 (float64 is accepted too, with float64 qkv: the precision checks use it)."""
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise InputError(f"qkv must be (total_tokens, 3, heads, head_dim), got {tuple(qkv.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise InputError(f"cu_seqlens must be (batch + 1,), got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype != torch.int32:
        raise InputError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    heads, head_dim = qkv.shape[2], qkv.shape[3]
    table_dtypes = (torch.float32, torch.float64) if qkv.dtype == torch.float64 else (torch.float32,)
    if rel_bias is not None:
        if not isinstance(rel_bias, torch.Tensor):
            raise InputError(f"rel_bias must be a tensor (heads, 2 * max_seqlen - 1), got {type(rel_bias).__name__}")
        want = (heads, 2 * int(max_seqlen) - 1)
        if tuple(rel_bias.shape) != want:
            raise InputError(f"rel_bias must be (heads, 2 * max_seqlen - 1) = {want}, got {tuple(rel_bias.shape)}")
        if rel_bias.dtype not in table_dtypes:
            raise InputError(f"rel_bias must be float32, got {rel_bias.dtype}")
        if rel_bias.device != qkv.device:
            raise InputError(f"rel_bias must be on qkv's device {qkv.device}, got {rel_bias.device}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise InputError(f"window must be None or an int >= 0, got {window!r}")
    if rotary is not None:
        if not isinstance(rotary, (tuple, list)) or len(rotary) != 2:
            raise InputError("rotary must be None or a pair (cos, sin)")
        if head_dim % 2:
            raise InputError(f"rotary needs an even head_dim, got {head_dim}")
        for name, table in zip(("cos", "sin"), rotary):
            if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != head_dim // 2:
                shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
                raise InputError(f"rotary {name} must be (positions, head_dim // 2 = {head_dim // 2}), got {shape}")
            if table.shape[0] < max_seqlen:
                raise InputError(f"rotary {name} has {table.shape[0]} positions, fewer than max_seqlen {max_seqlen}")
            if table.dtype not in table_dtypes:
                raise InputError(f"rotary {name} must be float32, got {table.dtype}")
            if table.device != qkv.device:
                raise InputError(f"rotary {name} must be on qkv's device {qkv.device}, got {table.device}")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding: x (..., positions, heads, head_dim), cos/sin (positions, head_dim // 2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention_ref(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, *,
    rel_bias: torch.Tensor | None = None, window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Ground truth: one sequence at a time, in fp32."""
    _check(qkv, cu_seqlens, max_seqlen, rel_bias, window, rotary)
    head_dim = qkv.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty(qkv.shape[0], qkv.shape[2], head_dim, dtype=torch.float32, device=qkv.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        length = end - start
        q, k, v = qkv[start:end].float().unbind(1)  # each (len, heads, head_dim)
        if rotary is not None:
            cos, sin = (t[:length].float() for t in rotary)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        offset = torch.arange(length, device=qkv.device)
        offset = offset[None, :] - offset[:, None]  # (query, key): j - i
        if rel_bias is not None:
            scores = scores + rel_bias.float()[:, offset + max_seqlen - 1]
        if window is not None:
            scores = scores.masked_fill(offset.abs() > window, -math.inf)
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out.to(qkv.dtype)


def _score_mask(valid_keys, q0, q1, k0, k1, rel_bias, window, max_seqlen, dtype, device):
    """Additive mask (batch, heads or 1, q1 - q0, k1 - k0) for padded queries q0..q1 against keys k0..k1:
    -inf on padding keys and outside the window, plus the relative bias."""
    offset = torch.arange(k0, k1, device=device)[None, :] - torch.arange(q0, q1, device=device)[:, None]
    mask = torch.zeros(1, 1, q1 - q0, k1 - k0, dtype=dtype, device=device)
    if rel_bias is not None:
        mask = mask + rel_bias.to(dtype)[None, :, offset + max_seqlen - 1]
    if window is not None:
        mask = mask.masked_fill(offset.abs() > window, -math.inf)
    return mask.masked_fill(~valid_keys[:, None, None, k0:k1], -math.inf)


def attention_torch(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, *,
    rel_bias: torch.Tensor | None = None, window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fallback: scatter into a padded batch and call PyTorch's SDPA with a key-padding mask (a float mask
    when rel_bias or window is set). Rotary goes in a pre-pass on the padded q and k. With a window
    narrower than the sequence, query blocks of _LOCAL_BLOCK rows attend only to their band of keys."""
    _check(qkv, cu_seqlens, max_seqlen, rel_bias, window, rotary)
    total, _, heads, head_dim = qkv.shape
    batch = cu_seqlens.numel() - 1
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    positions = torch.arange(max_seqlen, device=qkv.device)
    valid = positions[None, :] < lengths[:, None]  # (batch, max_seqlen)
    padded = qkv.new_zeros(batch, max_seqlen, 3, heads, head_dim)
    padded[valid] = qkv
    if rotary is not None:
        cos, sin = (t[:max_seqlen].to(qkv.dtype) for t in rotary)
        padded[:, :, 0] = rotate(padded[:, :, 0], cos, sin)
        padded[:, :, 1] = rotate(padded[:, :, 1], cos, sin)
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, max_seqlen, head_dim)
    if rel_bias is None and window is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=scale)
    else:
        length = max_seqlen
        block = length if window is None or length <= 2 * _LOCAL_BLOCK + 2 * window else _LOCAL_BLOCK
        parts = []
        for q0 in range(0, length, block):
            q1 = min(length, q0 + block)
            k0, k1 = (0, length) if window is None else (max(0, q0 - window), min(length, q1 + window))
            mask = _score_mask(valid, q0, q1, k0, k1, rel_bias, window, max_seqlen, qkv.dtype, qkv.device)
            parts.append(F.scaled_dot_product_attention(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1],
                                                        attn_mask=mask, scale=scale))
        out = torch.cat(parts, dim=2)
    return out.transpose(1, 2)[valid].reshape(total, heads, head_dim)


def attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    impl: str = "auto",
    *,
    rel_bias: torch.Tensor | None = None,
    window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Dispatch to the best (or the named) implementation for qkv's device. The options go only to calls
    that use them, so a plug-in candidate with the plain signature still runs plain attention."""
    fn = pick("attention", qkv.device.type, impl)
    if rel_bias is None and window is None and rotary is None:
        return fn(qkv, cu_seqlens, max_seqlen, scale)
    return fn(qkv, cu_seqlens, max_seqlen, scale, rel_bias=rel_bias, window=window, rotary=rotary)
