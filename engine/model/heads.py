"""Task heads on top of the encoder, for packed (padding-free) hidden states.

Packed inputs: hidden (total_tokens, hidden), cu_seqlens (batch + 1,) int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig

POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class PoolingConfig:
    """sentence-transformers pooling: mode and whether a Normalize module follows."""

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {self.mode!r}")


def sequence_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int64: which sequence each packed token belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=total)


def pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor, config: PoolingConfig) -> torch.Tensor:
    """hidden (total_tokens, hidden) -> sentence embeddings (batch, hidden) in fp32."""
    batch = cu_seqlens.numel() - 1
    h = hidden.float()
    if config.mode == "cls":
        out = h[cu_seqlens[:-1].long()]
    else:
        seq = sequence_ids(cu_seqlens, h.shape[0])
        if config.mode == "mean":
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(1).to(h.dtype)
            out = h.new_zeros(batch, h.shape[1]).index_add_(0, seq, h) / lengths[:, None]
        else:
            out = h.new_full((batch, h.shape[1]), float("-inf"))
            out = out.scatter_reduce(0, seq[:, None].expand_as(h), h, reduce="amax")
    return F.normalize(out, dim=-1) if config.normalize else out


def pool_padded(hidden: torch.Tensor, attention_mask: torch.Tensor, config: PoolingConfig,
                normalize: bool | None = None) -> torch.Tensor:
    """The padded twin of ``pool``: hidden (batch, seq, hidden), attention_mask (batch, seq) 0/1 ->
    (batch, hidden) in hidden's dtype, real tokens only. Written with masked reductions so that it
    traces into ONNX and keeps gradients (training); ``normalize`` overrides ``config.normalize``."""
    valid = attention_mask[:, :, None].to(hidden.dtype)
    if config.mode == "cls":
        out = hidden[:, 0]
    elif config.mode == "mean":
        out = (hidden * valid).sum(1) / valid.sum(1).clamp(min=1.0)
    else:
        out = hidden.masked_fill(valid == 0, float("-inf")).amax(1)
    return F.normalize(out, dim=-1) if (config.normalize if normalize is None else normalize) else out


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(hidden of [CLS]))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_hidden))


class SequenceClassificationHead(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pooler = Pooler(config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """-> logits (batch, num_labels)."""
        return self.classifier(self.pooler(hidden[cu_seqlens[:-1].long()]))


class TokenClassificationHead(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """-> logits (total_tokens, num_labels)."""
        return self.classifier(hidden)


class QuestionAnsweringHead(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """-> (total_tokens, 2): start and end logits."""
        return self.qa_outputs(hidden)


def build_head(config: EncoderConfig) -> nn.Module | None:
    task = config.task
    if task == "classify":
        return SequenceClassificationHead(config)
    if task == "ner":
        return TokenClassificationHead(config)
    if task == "qa":
        return QuestionAnsweringHead(config)
    return None


def load_head_state(head: nn.Module | None, state: dict[str, torch.Tensor]) -> None:
    if head is None:
        return
    names = {
        SequenceClassificationHead: {"pooler.dense": "pooler.dense", "classifier": "classifier"},
        TokenClassificationHead: {"classifier": "classifier"},
        QuestionAnsweringHead: {"qa_outputs": "qa_outputs"},
    }[type(head)]
    modules = dict(head.named_modules())
    with torch.no_grad():
        for ours, theirs in names.items():
            modules[ours].weight.copy_(state[theirs + ".weight"])
            modules[ours].bias.copy_(state[theirs + ".bias"])
