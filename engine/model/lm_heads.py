"""Pre-training heads: the masked language model (fill-mask, SPLADE sparse embeddings) and
next-sentence prediction, for packed (padding-free) hidden states.

Which weights a family's head reads is data: ``LM_HEAD_NAMES`` maps an architecture's prefix
("Bert" of "BertForMaskedLM") to the names of its head's tensors, so another family adds a row,
not a class. The decoder is tied to the word embeddings unless the checkpoint carries its own.

Packed inputs: hidden (total_tokens, hidden), cu_seqlens (batch + 1,) int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops.plan import KernelPlan
from .config import EncoderConfig

# SPLADE's vocabulary-wide activations are formed for this many tokens at a time:
# tokens x vocab x 4 bytes (2048 x 30522 x 4 = 250 MB) bounds the memory of one step.
SPARSE_CHUNK_TOKENS = 2048


@dataclass(frozen=True)
class LmHeadNames:
    """Tensor names (without .weight/.bias) of a family's pre-training heads; None: the family has none."""

    transform_dense: str | None = "cls.predictions.transform.dense"
    transform_norm: str | None = "cls.predictions.transform.LayerNorm"
    decoder: str = "cls.predictions.decoder"  # .weight optional: tied to the word embeddings when absent
    decoder_bias: str = "cls.predictions.bias"
    seq_relationship: str | None = "cls.seq_relationship"
    pooler: str | None = "pooler.dense"


_ROBERTA_LM = LmHeadNames(transform_dense="lm_head.dense", transform_norm="lm_head.layer_norm",
                          decoder="lm_head.decoder", decoder_bias="lm_head.bias", seq_relationship=None, pooler=None)
# architecture prefix -> names (families.MASKED_LM_FAMILIES lists the families with a row)
LM_HEAD_NAMES: dict[str, LmHeadNames] = {
    "Bert": LmHeadNames(), "Roberta": _ROBERTA_LM, "XLMRoberta": _ROBERTA_LM, "Camembert": _ROBERTA_LM,
    "MPNet": _ROBERTA_LM,
    "DistilBert": LmHeadNames(transform_dense="vocab_transform", transform_norm="vocab_layer_norm",
                              decoder="vocab_projector", decoder_bias="vocab_projector.bias", seq_relationship=None,
                              pooler=None),
}
# architecture suffix -> which of the heads it has
HEAD_PARTS = {
    "ForMaskedLM": ("mlm",),
    "ForNextSentencePrediction": ("nsp",),
    "ForPreTraining": ("mlm", "nsp"),
}


def head_parts(architecture: str) -> tuple[str, ...]:
    return next((parts for suffix, parts in HEAD_PARTS.items() if architecture.endswith(suffix)), ())


def names_for(architecture: str) -> LmHeadNames:
    suffix = next(s for s in HEAD_PARTS if architecture.endswith(s))
    prefix = architecture[: -len(suffix)]
    if prefix not in LM_HEAD_NAMES:
        raise ValueError(f"no pre-training head names for {architecture!r}; known prefixes {sorted(LM_HEAD_NAMES)}")
    return LM_HEAD_NAMES[prefix]


def weight_shapes(config: EncoderConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) tensor names -> shapes of the pre-training heads ``config`` has."""
    parts = head_parts(config.architecture)
    if not parts:
        return {}, {}
    names, h, v = names_for(config.architecture), config.hidden_size, config.vocab_size
    required: dict[str, tuple[int, ...]] = {}
    optional: dict[str, tuple[int, ...]] = {}
    if "mlm" in parts:
        if names.transform_dense:
            required[names.transform_dense + ".weight"] = (h, h)
            required[names.transform_dense + ".bias"] = (h,)
        if names.transform_norm:
            required[names.transform_norm + ".weight"] = (h,)
            required[names.transform_norm + ".bias"] = (h,)
        required[names.decoder_bias] = (v,)
        optional[names.decoder + ".weight"] = (v, h)
    if "nsp" in parts:
        required[names.pooler + ".weight"] = (h, h)
        required[names.pooler + ".bias"] = (h,)
        required[names.seq_relationship + ".weight"] = (2, h)
        required[names.seq_relationship + ".bias"] = (2,)
    return required, optional


class MaskedLMHead(nn.Module):
    """transform (dense, GELU, LayerNorm) then the vocabulary projection, on selected tokens only."""

    def __init__(self, config: EncoderConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.approximate = "none" if config.gelu_approximation == "none" else "tanh"
        self.word_embeddings = [word_embeddings]  # a list: tied, so not a second registered parameter
        self.register_parameter("decoder_weight", None)  # the checkpoint's own (untied) decoder, if any
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.mask_token_id: int | None = None  # set by the loader from the tokenizer

    @property
    def decoder(self) -> torch.Tensor:
        return self.decoder_weight if self.decoder_weight is not None else self.word_embeddings[0].weight

    def _project(self, name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 plan: KernelPlan | None) -> torch.Tensor:
        """x @ weight^T + bias with the encoder's GEMM choice: bertrt's packed CPU GEMM computes every
        row the same way whatever the batch (so a batch-invariant plan stays invariant through this
        head); weight and bias are packed once, again only when they change."""
        gemm = "torch" if plan is None else plan.gemm_for(x.shape[0])
        if not gemm.startswith("cpu") or x.is_cuda:
            return F.linear(x, weight, bias)
        key = (weight.data_ptr(), weight._version, bias._version)
        cached = self.__dict__.setdefault("_bertrt_packed", {}).get(name)
        if cached is None or cached[0] != key:  # kept outside the module's parameters: not saved or moved
            cached = self.__dict__["_bertrt_packed"][name] = (key, ops.pack_weight(weight.float(), bias.float()))
        return ops.linear(x.float(), cached[1], None, "none", impl=gemm).to(x.dtype)

    def forward(self, hidden: torch.Tensor, plan: KernelPlan | None = None) -> torch.Tensor:
        """hidden (tokens, hidden) -> logits (tokens, vocab)."""
        x = (self._project("dense", hidden, self.dense.weight, self.dense.bias, plan)
             if type(self.dense) is nn.Linear else self.dense(hidden))  # a quantized dense runs its own GEMM
        x = self.norm(F.gelu(x, approximate=self.approximate))
        return self._project("decoder", x, self.decoder, self.bias, plan)

    def sparse(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, plan: KernelPlan | None = None) -> torch.Tensor:
        """SPLADE: max over each sequence's tokens of log(1 + relu(logits)) -> (batch, vocab) fp32.
        All packed tokens are real, so no vocabulary-wide work is spent on padding; whole sequences
        go through SPARSE_CHUNK_TOKENS tokens at a time to bound the (tokens, vocab) activations."""
        batch, vocab = cu_seqlens.numel() - 1, self.bias.numel()
        out = torch.zeros(batch, vocab, dtype=torch.float32, device=hidden.device)  # log1p(relu(.)) >= 0
        bounds = cu_seqlens.tolist()
        first = 0
        while first < batch:
            last = first + 1
            while last < batch and bounds[last + 1] - bounds[first] <= SPARSE_CHUNK_TOKENS:
                last += 1
            start, end = bounds[first], bounds[last]
            if end > start:
                weights = torch.log1p(torch.relu(self.forward(hidden[start:end], plan).float()))
                lengths = torch.tensor([bounds[i + 1] - bounds[i] for i in range(first, last)], device=hidden.device)
                seq = torch.repeat_interleave(torch.arange(last - first, device=hidden.device), lengths)
                out[first:last] = out[first:last].scatter_reduce(0, seq[:, None].expand_as(weights), weights, "amax")
            first = last
        return out


class NextSentenceHead(nn.Module):
    """pooler (tanh(dense([CLS]))) then seq_relationship: logits (batch, 2), index 0 = "b follows a"."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(torch.tanh(self.pooler(hidden[cu_seqlens[:-1].long()])))


class PreTrainingHeads(nn.Module):
    """The heads of a *ForMaskedLM / *ForNextSentencePrediction / *ForPreTraining checkpoint.

    run(task, hidden, cu_seqlens, input_ids):
      fill_mask:     (masks, vocab) logits at the [MASK] tokens, in packed order
      embed_sparse:  (batch, vocab) SPLADE weights
      next_sentence: (batch, 2) logits
    """

    def __init__(self, config: EncoderConfig, word_embeddings: nn.Embedding):
        super().__init__()
        parts = head_parts(config.architecture)
        self.names = names_for(config.architecture)
        self.mlm = MaskedLMHead(config, word_embeddings) if "mlm" in parts else None
        self.nsp = NextSentenceHead(config) if "nsp" in parts else None

    def run(self, task: str, hidden: torch.Tensor, cu_seqlens: torch.Tensor, input_ids: torch.Tensor,
            plan: KernelPlan | None = None) -> torch.Tensor:
        if task == "next_sentence" and self.nsp is not None:
            return self.nsp(hidden, cu_seqlens)
        if task == "fill_mask" and self.mlm is not None:
            # the [vocab]-wide projection only where a prediction is asked for
            return self.mlm(hidden[input_ids == self.mlm.mask_token_id], plan).float()
        if task == "embed_sparse" and self.mlm is not None:
            return self.mlm.sparse(hidden, cu_seqlens, plan)
        raise ValueError(f"this checkpoint's pre-training heads do not run task {task!r}")

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        names = self.names
        with torch.no_grad():
            if self.mlm is not None:
                for module, name in ((self.mlm.dense, names.transform_dense), (self.mlm.norm, names.transform_norm)):
                    module.weight.copy_(state[name + ".weight"])
                    module.bias.copy_(state[name + ".bias"])
                self.mlm.bias.copy_(state[names.decoder_bias])
                own = state.get(names.decoder + ".weight")
                word = self.mlm.word_embeddings[0].weight
                if own is not None and not torch.equal(own.to(word.dtype), word):
                    self.mlm.decoder_weight = nn.Parameter(own.clone(), requires_grad=False)
            if self.nsp is not None:
                nsp = self.nsp
                for module, name in ((nsp.pooler, names.pooler), (nsp.seq_relationship, names.seq_relationship)):
                    module.weight.copy_(state[name + ".weight"])
                    module.bias.copy_(state[name + ".bias"])
