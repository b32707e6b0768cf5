"""Packing tokenized sequences into padding-free batches under a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """input_ids, token_type_ids: (total_tokens,) int64; cu_seqlens: (batch + 1,) int32.

    indices[i] is the caller's position of packed sequence i.
    """

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    indices: list[int]

    @property
    def lengths(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.token_type_ids.to(device), self.cu_seqlens.to(device),
                           self.max_seqlen, self.indices)

    def padded(self, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, token_type_ids), each (batch, max_seqlen) int64, padded right."""
        lengths = torch.as_tensor(self.lengths)
        valid = torch.arange(self.max_seqlen)[None, :] < lengths[:, None]
        ids = torch.full(valid.shape, pad_id, dtype=torch.int64)
        types = torch.zeros(valid.shape, dtype=torch.int64)
        ids[valid] = self.input_ids.cpu()
        types[valid] = self.token_type_ids.cpu()
        return ids, valid.to(torch.int64), types


def pack(ids: list[list[int]], type_ids: list[list[int]], indices: list[int]) -> PackedBatch:
    lengths = [len(x) for x in ids]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return PackedBatch(
        input_ids=torch.tensor([t for seq in ids for t in seq], dtype=torch.int64),
        token_type_ids=torch.tensor([t for seq in type_ids for t in seq], dtype=torch.int64),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        max_seqlen=max(lengths) if lengths else 0,
        indices=indices,
    )


def plan_batches(lengths: list[int], max_tokens: int, max_sequences: int) -> list[list[int]]:
    """Group sequence indices into batches of at most max_tokens tokens and max_sequences sequences.

    Longest first, so that sequences of similar length share a batch (tight attention tiles) and the
    biggest batch runs first (memory peaks early, not after a long run).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (tokens + lengths[i] > max_tokens or len(current) >= max_sequences):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches
