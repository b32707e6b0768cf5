"""LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]).

    input_ids:             (tokens,) int32 or int64 (packed, padding-free)
    token_type_ids:        (tokens,) int32/int64, or None when token_type_embeddings is None
    position_ids:          (tokens,) int32/int64, or None when position_embeddings is None
    word_embeddings:       (vocab, hidden)
    position_embeddings:   (max_positions, hidden), or None (rotary positions: ModernBERT)
    token_type_embeddings: (type_vocab, hidden), or None (no token types: DistilBERT, ModernBERT)
    weight:                (hidden,) LayerNorm gamma
    bias:                  (hidden,) LayerNorm beta, or None (a bias-free LayerNorm)
    returns (tokens, hidden) in the embeddings' dtype
Ids of a missing table are ignored. Out-of-range ids raise ValueError (never a silent wrong row or an
out-of-bounds read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick


def check_ids(name: str, ids: torch.Tensor, table: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of ids when its table is given, got {type(ids).__name__}")
    if ids.dim() != 1:
        raise ValueError(f"{name} must be (tokens,), got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
        raise ValueError(
            f"{name} out of range: min {int(ids.min())}, max {int(ids.max())}, table has {table.shape[0]} rows"
        )


def used_ids(input_ids, token_type_ids, position_ids, position, token_type) -> dict:
    """name -> ids of the tables that are present (the ids of a missing table are ignored)."""
    found = {"input_ids": input_ids}
    if token_type is not None:
        found["token_type_ids"] = token_type_ids
    if position is not None:
        found["position_ids"] = position_ids
    return found


def _check(input_ids, token_type_ids, position_ids, word, position, token_type) -> None:
    tables = {"input_ids": word, "token_type_ids": token_type, "position_ids": position}
    ids = used_ids(input_ids, token_type_ids, position_ids, position, token_type)
    for name, t in ids.items():
        check_ids(name, t, tables[name])
    if len({t.shape for t in ids.values()}) > 1:
        raise ValueError(
            f"{', '.join(ids)} must have one shape, got " + ", ".join(str(tuple(t.shape)) for t in ids.values())
        )
    for name, t in (("position_embeddings", position), ("token_type_embeddings", token_type)):
        if t is not None and (t.dim() != 2 or t.shape[1] != word.shape[1]):
            raise ValueError(f"{name} must be (rows, {word.shape[1]}), got {tuple(t.shape)}")


def embedding_layer_norm_ref(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    _check(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings, token_type_embeddings)
    y = word_embeddings[input_ids].float()
    if position_embeddings is not None:
        y = y + position_embeddings[position_ids].float()
    if token_type_embeddings is not None:
        y = y + token_type_embeddings[token_type_ids].float()
    hidden = word_embeddings.shape[1]
    beta = None if bias is None else bias.float()
    return F.layer_norm(y, (hidden,), weight.float(), beta, eps).to(word_embeddings.dtype)


def embedding_layer_norm_torch(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    _check(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings, token_type_embeddings)
    y = word_embeddings[input_ids]
    if position_embeddings is not None:
        y = y + position_embeddings[position_ids]
    if token_type_embeddings is not None:
        y = y + token_type_embeddings[token_type_ids]
    return F.layer_norm(y, (word_embeddings.shape[1],), weight, bias, eps)


def embedding_layer_norm(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12, impl: str = "auto",
) -> torch.Tensor:
    fn = pick("embedding_layer_norm", word_embeddings.device.type, impl)
    return fn(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
              token_type_embeddings, weight, bias, eps)
