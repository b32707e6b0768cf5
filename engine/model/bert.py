"""A loaded BERT-family model: encoder + optional task head + sentence-transformers pooling."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig
from .encoder import Encoder, KernelPlan
from .heads import PoolingConfig, build_head, load_head_state, pool
from .lm_heads import PreTrainingHeads, head_parts

# tasks of the pre-training heads (they need the input ids: fill_mask predicts at the [MASK] tokens)
PRETRAINING_TASKS = ("fill_mask", "next_sentence", "embed_sparse")


class BertModel(nn.Module):
    """Runs one task. ``task`` is "embed" for any checkpoint, or the head's own task.

    forward_packed(input_ids (T,), cu_seqlens (B+1,), max_seqlen, token_type_ids (T,)) returns
      embed:    (B, hidden) pooled sentence embeddings (fp32)
      classify: (B, num_labels) logits
      ner:      (T, num_labels) logits
      qa:       (T, 2) start/end logits
      tokens:   (T, hidden) last hidden states (fp32); embed_unnormalized: embed without Normalize
    """

    def __init__(self, config: EncoderConfig, pooling: PoolingConfig | None = None,
                 dense: list[nn.Module] | None = None):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = build_head(config)
        if head_parts(config.architecture):
            self.head = PreTrainingHeads(config, self.encoder.embeddings.word)
        self.pooling = pooling or PoolingConfig()
        # sentence-transformers Dense modules between pooling and Normalize (heads.SentenceDense)
        self.dense = nn.ModuleList(dense or [])

    def embed_pooled(self, pooled: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """Pooled (batch, hidden) -> the sentence embedding: the Dense modules, then Normalize (fp32)."""
        for layer in self.dense:
            pooled = layer(pooled.to(layer.linear.weight.dtype)).float()
        normalize = self.pooling.normalize if normalize is None else normalize
        return F.normalize(pooled, dim=-1) if normalize else pooled

    @property
    def plan(self) -> KernelPlan:
        return self.encoder.plan

    def load_hf_state(self, state: dict[str, torch.Tensor]) -> None:
        self.encoder.load_hf_state(state)
        if isinstance(self.head, PreTrainingHeads):
            self.head.load_state(state)
        else:
            load_head_state(self.head, state)

    def forward_packed(self, input_ids, cu_seqlens, max_seqlen, token_type_ids=None, task: str | None = None):
        task = task or self.config.task
        hidden = self.encoder.forward_packed(input_ids, cu_seqlens, max_seqlen, token_type_ids)
        if task in PRETRAINING_TASKS:
            if task not in self.config.tasks:
                raise ValueError(f"this {self.config.architecture} checkpoint has no head for task {task!r}")
            return self.head.run(task, hidden, cu_seqlens, input_ids, self.plan)
        return self.apply_head(hidden, cu_seqlens, task)

    def apply_head(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, task: str) -> torch.Tensor:
        if task in ("embed", "embed_unnormalized"):  # embed_unnormalized: TEI's normalize=false
            pooled = pool(hidden, cu_seqlens, dataclasses.replace(self.pooling, normalize=False))
            return self.embed_pooled(pooled, False if task == "embed_unnormalized" else None)
        if task == "tokens":  # the last hidden state of every token (TEI /embed_all)
            return hidden.float()
        if task != self.config.task or self.head is None:
            raise ValueError(f"this {self.config.architecture} checkpoint has no head for task {task!r}")
        return self.head(hidden, cu_seqlens)

    def forward_padded(self, input_ids, attention_mask, token_type_ids=None, task: str | None = None):
        """Padded layout (batch, seq_len). Outputs as forward_packed but token outputs are
        (batch, seq_len, ...) with meaningless values at padding positions."""
        task = task or self.config.task
        hidden = self.encoder.forward_padded(input_ids, attention_mask, token_type_ids)
        batch, seq_len, width = hidden.shape
        valid = attention_mask.bool()
        lengths = valid.sum(1).to(torch.int32)
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=hidden.device)
        cu_seqlens[1:] = torch.cumsum(lengths, 0)
        # Pooling and heads work on real tokens; left-aligned padding assumed (tokenizers pad right).
        packed = hidden[valid]
        out = self.apply_head(packed, cu_seqlens, task)
        if task in ("ner", "qa"):
            full = out.new_zeros(batch, seq_len, out.shape[-1])
            full[valid] = out
            return full
        return out
