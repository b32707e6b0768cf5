"""bertrt's own BERT encoder, written with ``bertrt.ops`` (not transformers' modules).

Two entry points share every weight and op:

* ``forward_packed``: padding-free. Tokens of all sequences are concatenated, ``cu_seqlens`` marks
  the boundaries; no FLOP is spent on padding.
* ``forward_padded``: the classic (batch, seq_len) layout with an attention mask, for exporters and
  for callers that already hold padded tensors.

Linear layers are plain ``nn.Linear`` modules so that ``quantize_`` can swap them; the QKV
projections are fused into one (3 * hidden, hidden) matrix at load time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops.plan import KERNEL_CHOICES, KernelPlan
from .config import EncoderConfig

__all__ = ["KERNEL_CHOICES", "Encoder", "EncoderLayer", "KernelPlan", "positions_from_cu_seqlens"]


def packed_weight(linear: nn.Linear) -> ops.PackedWeight:
    """The layer's weight in the CPU GEMM layout, packed on first use and again whenever the weight
    or bias changes (their version counters move on any in-place update)."""
    bias = linear.bias
    key = (linear.weight.data_ptr(), linear.weight._version, None if bias is None else bias._version)
    cached = linear.__dict__.get("_bertrt_packed")
    if cached is None or cached[0] != key:
        # stored outside the module's parameters and buffers: not saved, not moved by .to()
        cached = (key, ops.pack_weight(linear.weight, bias))
        linear.__dict__["_bertrt_packed"] = cached
    return cached[1]


def _dense(linear: nn.Module, x: torch.Tensor, plan: KernelPlan, activation: str = "none", defer: bool = True):
    """(y, bias, activated): y = x @ W^T, with the bias (and the activation) either applied or left
    for a fused epilogue kernel (only when ``defer`` and the plan defers biases)."""
    gemm = plan.gemm_for(x.shape[0])
    if gemm.startswith("cpu") and type(linear) is nn.Linear and not x.is_cuda:
        # bertrt's GEMM multiplies in fp32: BF16/FP16 activations (batch-invariant plans) go through a copy
        y = ops.linear(x if x.dtype == torch.float32 else x.float(), packed_weight(linear), None, activation,
                       impl=gemm)
        return (y if y.dtype == x.dtype else y.to(x.dtype)), None, True
    fused = getattr(linear, "forward_activation", None)  # quantized linears (bertrt.quant.Int8Linear)
    if fused is not None:
        return fused(x, activation, plan.int8), None, activation != "none"
    y, bias = _project(linear, x, plan.defer_bias and defer)
    return y, bias, False


def _project(linear: nn.Module, x: torch.Tensor, defer_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x @ W^T, with the bias either applied (returned None) or returned for a fused epilogue."""
    if defer_bias and type(linear) is nn.Linear:
        return F.linear(x, linear.weight), linear.bias
    return linear(x), None


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.heads = config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.gelu = config.gelu_approximation
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=self.eps)
        self.ffn_in = nn.Linear(h, i)
        self.ffn_out = nn.Linear(i, h)
        self.ffn_norm = nn.LayerNorm(h, eps=self.eps)

    def forward(self, x: torch.Tensor, attend, plan: KernelPlan) -> torch.Tensor:
        """x: (tokens, hidden); attend maps qkv (tokens, 3, heads, head_dim) -> (tokens, heads, head_dim)."""
        tokens, hidden = x.shape
        impl = lambda op: plan.impl(op, tokens)  # noqa: E731
        qkv, _, _ = _dense(self.qkv, x, plan, defer=False)
        context = attend(qkv.view(tokens, 3, self.heads, hidden // self.heads)).reshape(tokens, hidden)
        y, bias, _ = _dense(self.attn_out, context, plan)
        x = ops.bias_residual_layer_norm(
            y, bias, x, self.attn_norm.weight, self.attn_norm.bias, self.eps, impl=impl("bias_residual_layer_norm")
        )
        h, bias, activated = _dense(self.ffn_in, x, plan, "gelu" if self.gelu == "none" else "gelu_tanh")
        if not activated:
            h = ops.bias_gelu(h, bias, self.gelu, impl=impl("bias_gelu"))
        y, bias, _ = _dense(self.ffn_out, h, plan)
        return ops.bias_residual_layer_norm(
            y, bias, x, self.ffn_norm.weight, self.ffn_norm.bias, self.eps, impl=impl("bias_residual_layer_norm")
        )


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids, position_ids, plan: KernelPlan) -> torch.Tensor:
        """ids: (tokens,) -> (tokens, hidden)."""
        return ops.embedding_layer_norm(
            input_ids, token_type_ids, position_ids, self.word.weight, self.position.weight,
            self.token_type.weight, self.norm.weight, self.norm.bias, self.norm.eps,
            impl=plan.impl("embedding_layer_norm", input_ids.shape[0]),
        )


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position ids (total,) restarting at 0 for every packed sequence."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        # The static default for direct use (training, export); a runner sets the engine's plan once.
        self.plan = KernelPlan()

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids: (total_tokens,); cu_seqlens: (batch + 1,) int32 -> hidden states (total_tokens, hidden)."""
        total = input_ids.shape[0]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_cu_seqlens(cu_seqlens, total)
        if max_seqlen > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {max_seqlen} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        plan = self.plan
        x = self.embeddings(input_ids, token_type_ids, position_ids, plan)
        # ragged: padding to the longest sequence would add over 10% work (padding-free kernels win there)
        ragged = (cu_seqlens.numel() - 1) * max_seqlen > 1.1 * total
        attention_impl = plan.impl("attention", total, ragged)
        attend = lambda qkv: ops.attention(qkv, cu_seqlens, max_seqlen, impl=attention_impl)
        for layer in self.layers:
            x = layer(x, attend, plan)
        return x

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask: (batch, seq_len) -> hidden states (batch, seq_len, hidden).

        Padding positions get values too (they attend to the real tokens) but are meaningless.
        """
        batch, seq_len = input_ids.shape
        if seq_len > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)
        plan = self.plan
        x = self.embeddings(input_ids.reshape(-1), token_type_ids.reshape(-1), positions.reshape(-1), plan)
        key_mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq_len)

        def attend(qkv: torch.Tensor) -> torch.Tensor:
            heads, head_dim = qkv.shape[2], qkv.shape[3]
            q, k, v = qkv.view(batch, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            return out.transpose(1, 2).reshape(batch * seq_len, heads, head_dim)

        for layer in self.layers:
            x = layer(x, attend, plan)
        return x.view(batch, seq_len, -1)

    def load_hf_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights named as in a Hugging Face BertModel (see ``weights.expected_shapes``)."""
        e = self.embeddings
        mine = {
            e.word.weight: "embeddings.word_embeddings.weight",
            e.position.weight: "embeddings.position_embeddings.weight",
            e.token_type.weight: "embeddings.token_type_embeddings.weight",
            e.norm.weight: "embeddings.LayerNorm.weight",
            e.norm.bias: "embeddings.LayerNorm.bias",
        }
        with torch.no_grad():
            for param, name in mine.items():
                param.copy_(state[name])
            for n, layer in enumerate(self.layers):
                p = f"encoder.layer.{n}."
                qkv = [state[p + f"attention.self.{proj}.weight"] for proj in ("query", "key", "value")]
                layer.qkv.weight.copy_(torch.cat(qkv, 0))
                qkv_bias = [state[p + f"attention.self.{proj}.bias"] for proj in ("query", "key", "value")]
                layer.qkv.bias.copy_(torch.cat(qkv_bias, 0))
                pairs = {
                    layer.attn_out: "attention.output.dense",
                    layer.attn_norm: "attention.output.LayerNorm",
                    layer.ffn_in: "intermediate.dense",
                    layer.ffn_out: "output.dense",
                    layer.ffn_norm: "output.LayerNorm",
                }
                for module, name in pairs.items():
                    module.weight.copy_(state[p + name + ".weight"])
                    module.bias.copy_(state[p + name + ".bias"])
