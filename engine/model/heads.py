"""Task heads on top of the encoder, for packed (padding-free) hidden states.

Packed inputs: hidden (total_tokens, hidden), cu_seqlens (batch + 1,) int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import GELU_VARIANTS, EncoderConfig
from .families import HeadSpec

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
# sentence-transformers Dense activation_function -> the function applied after its linear layer
DENSE_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": lambda x: x, "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.ReLU": torch.relu, "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
}


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
    elif config.mode == "lasttoken":
        out = h[(cu_seqlens[1:] - 1).clamp_min(0).long()]
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
    elif config.mode == "lasttoken":
        last = (attention_mask.sum(1) - 1).clamp(min=0).long()
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    elif config.mode == "mean":
        out = (hidden * valid).sum(1) / valid.sum(1).clamp(min=1.0)
    else:
        out = hidden.masked_fill(valid == 0, float("-inf")).amax(1)
    return F.normalize(out, dim=-1) if (config.normalize if normalize is None else normalize) else out


class SentenceDense(nn.Module):
    """A sentence-transformers Dense module after pooling: activation(linear(x)), (batch, in) -> (batch, out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "torch.nn.modules.activation.Tanh"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DENSE_ACTIVATIONS[self.activation](self.linear(x))


class Pooler(nn.Module):
    """A head's transform: activation(dense(x)), then an optional LayerNorm (ModernBERT's head).
    BERT's pooler is tanh(dense([CLS])); RoBERTa's classifier.dense + tanh; DistilBERT's
    pre_classifier + ReLU; ELECTRA's dense + GELU."""

    def __init__(self, hidden: int, activation: str = "tanh", bias: bool = True, norm: bool = False,
                 norm_bias: bool = True, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden, bias=bias)
        self.activation = activation
        self.norm = nn.LayerNorm(hidden, eps=eps, bias=norm_bias) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense(x)
        if self.activation == "tanh":
            x = torch.tanh(x)
        elif self.activation == "relu":
            x = torch.relu(x)
        else:
            x = F.gelu(x, approximate="none" if GELU_VARIANTS[self.activation] == "none" else "tanh")
        return x if self.norm is None else self.norm(x)


def _pooler(spec: HeadSpec, config: EncoderConfig) -> Pooler | None:
    if spec.dense is None:
        return None
    modern = spec.activation == "config"
    return Pooler(config.hidden_size, config.classifier_activation if modern else spec.activation,
                  bias=config.classifier_bias if modern else True, norm=spec.norm is not None,
                  norm_bias=config.norm_bias, eps=config.layer_norm_eps)


class SequenceClassificationHead(nn.Module):
    """classifier(pooler(first token)), or of the mean over tokens (ModernBERT's classifier_pooling)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.spec = config.family.sequence_head
        self.pooling = config.classifier_pooling if config.family.modern else "cls"
        self.pooler = _pooler(self.spec, config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def pooled(self, first: torch.Tensor) -> torch.Tensor:
        return self.classifier(first if self.pooler is None else self.pooler(first))

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """-> logits (batch, num_labels)."""
        if self.pooling == "mean":
            return self.pooled(pool(hidden, cu_seqlens, PoolingConfig("mean")).to(hidden.dtype))
        return self.pooled(hidden[cu_seqlens[:-1].long()])


class TokenClassificationHead(nn.Module):
    def __init__(self, config: EncoderConfig, spec: HeadSpec | None = None, outputs: int | None = None):
        super().__init__()
        self.spec = spec or config.family.token_head
        self.pooler = _pooler(self.spec, config)  # ModernBERT: its head runs on every token first
        self.classifier = nn.Linear(config.hidden_size, config.num_labels if outputs is None else outputs)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """-> logits (total_tokens, num_labels)."""
        return self.classifier(hidden if self.pooler is None else self.pooler(hidden))


class QuestionAnsweringHead(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.spec = config.family.qa_head
        self.pooler = _pooler(self.spec, config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """-> (total_tokens, 2): start and end logits."""
        return self.qa_outputs(hidden if self.pooler is None else self.pooler(hidden))


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
    """Weights by the head's spec (the checkpoint's names for its transform and output)."""
    if head is None:
        return
    spec = head.spec
    out = head.qa_outputs if isinstance(head, QuestionAnsweringHead) else head.classifier
    modules = [(out, spec.out)]
    if head.pooler is not None:
        modules += [(head.pooler.dense, spec.dense), (head.pooler.norm, spec.norm)]
    with torch.no_grad():
        for module, name in modules:
            if module is None:
                continue
            module.weight.copy_(state[name + ".weight"])
            if module.bias is not None:
                module.bias.copy_(state[name + ".bias"])
