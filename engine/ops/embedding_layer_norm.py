"""LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]).

    input_ids, token_type_ids, position_ids: (tokens,) int32 or int64 (packed, padding-free)
    word_embeddings:       (vocab, hidden)
    position_embeddings:   (max_positions, hidden)
    token_type_embeddings: (type_vocab, hidden)
    weight, bias:          (hidden,) LayerNorm gamma and beta
    returns (tokens, hidden) in the embeddings' dtype
Out-of-range ids raise ValueError (never a silent wrong row or an out-of-bounds read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import pick


def check_ids(name: str, ids: torch.Tensor, table: torch.Tensor) -> None:
    if ids.dim() != 1:
        raise ValueError(f"{name} must be (tokens,), got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]):
        raise ValueError(
            f"{name} out of range: min {int(ids.min())}, max {int(ids.max())}, table has {table.shape[0]} rows"
        )


def _check(input_ids, token_type_ids, position_ids, word, position, token_type) -> None:
    check_ids("input_ids", input_ids, word)
    check_ids("token_type_ids", token_type_ids, token_type)
    check_ids("position_ids", position_ids, position)
    if not (input_ids.shape == token_type_ids.shape == position_ids.shape):
        raise ValueError(
            "input_ids, token_type_ids and position_ids must have one shape, got "
            f"{tuple(input_ids.shape)}, {tuple(token_type_ids.shape)}, {tuple(position_ids.shape)}"
        )


def embedding_layer_norm_ref(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    _check(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings, token_type_embeddings)
    y = (
        word_embeddings[input_ids].float()
        + position_embeddings[position_ids].float()
        + token_type_embeddings[token_type_ids].float()
    )
    hidden = word_embeddings.shape[1]
    return F.layer_norm(y, (hidden,), weight.float(), bias.float(), eps).to(word_embeddings.dtype)


def embedding_layer_norm_torch(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    _check(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings, token_type_embeddings)
    y = word_embeddings[input_ids] + position_embeddings[position_ids] + token_type_embeddings[token_type_ids]
    return F.layer_norm(y, (word_embeddings.shape[1],), weight, bias, eps)


def embedding_layer_norm(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12, impl: str = "auto",
) -> torch.Tensor:
    fn = pick("embedding_layer_norm", word_embeddings.device.type, impl)
    return fn(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
              token_type_embeddings, weight, bias, eps)
