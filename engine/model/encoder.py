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

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops.plan import KERNEL_CHOICES, KernelPlan
from .config import EncoderConfig

__all__ = ["KERNEL_CHOICES", "Encoder", "EncoderLayer", "KernelPlan", "apply_rotary", "positions_from_cu_seqlens",
           "relative_position_bucket", "rotary_tables"]


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
    """One layer. Post-norm (BERT): x = LN(x + attn(x)); x = LN(x + ffn(x)). Pre-norm (ModernBERT,
    ``config.family.modern``): x = x + attn(LN(x)); x = x + ffn(LN(x)), where each LN is fused with
    the residual sum before it (``forward_prenorm``). Options come from the family's data: biases,
    GeGLU (a (2I, H) ffn_in whose halves gate each other), a local window, the rotary theta."""

    def __init__(self, config: EncoderConfig, index: int = 0):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        family = config.family
        self.heads = config.num_attention_heads
        self.eps = config.layer_norm_eps
        self.gelu = config.gelu_approximation
        self.gated = family.modern
        self.pre_norm = family.modern
        self.qkv = nn.Linear(h, 3 * h, bias=config.attention_bias)
        self.attn_out = nn.Linear(h, h, bias=config.attention_bias)
        # pre-norm: the norm before attention; ModernBERT's first layer reads the embeddings' norm instead
        self.attn_norm = (None if self.pre_norm and index == 0
                          else nn.LayerNorm(h, eps=self.eps, bias=config.norm_bias))
        self.ffn_in = nn.Linear(h, 2 * i if self.gated else i, bias=config.mlp_bias)
        self.ffn_out = nn.Linear(i, h, bias=config.mlp_bias)
        self.ffn_norm = nn.LayerNorm(h, eps=self.eps, bias=config.norm_bias)
        sliding = bool(config.layer_types) and config.layer_types[index] == "sliding_attention"
        self.window = config.local_attention // 2 if sliding else None  # |i - j| <= window
        self.rope_theta = ((config.local_rope_theta if sliding else config.global_rope_theta)
                           if family.modern else None)

    def _attention(self, x: torch.Tensor, attend, plan: KernelPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens, hidden = x.shape
        qkv, _, _ = _dense(self.qkv, x, plan, defer=False)
        context = attend(qkv.view(tokens, 3, self.heads, hidden // self.heads), self).reshape(tokens, hidden)
        y, bias, _ = _dense(self.attn_out, context, plan)
        return y, bias

    def _ffn_hidden(self, x: torch.Tensor, plan: KernelPlan, impl) -> torch.Tensor:
        if self.gated:  # GeGLU: the activation cannot ride the GEMM epilogue (it reads both halves)
            h, bias, activated = _dense(self.ffn_in, x, plan)
            return ops.bias_gelu(h, None if activated else bias, self.gelu, impl=impl("bias_gelu"), gated=True)
        h, bias, activated = _dense(self.ffn_in, x, plan, "gelu" if self.gelu == "none" else "gelu_tanh")
        return h if activated else ops.bias_gelu(h, bias, self.gelu, impl=impl("bias_gelu"))

    def forward(self, x: torch.Tensor, attend, plan: KernelPlan) -> torch.Tensor:
        """x: (tokens, hidden); attend maps (qkv (tokens, 3, heads, head_dim), layer) -> (tokens, heads, head_dim)."""
        impl = lambda op: plan.impl(op, x.shape[0])  # noqa: E731
        y, bias = self._attention(x, attend, plan)
        x = ops.bias_residual_layer_norm(
            y, bias, x, self.attn_norm.weight, self.attn_norm.bias, self.eps, impl=impl("bias_residual_layer_norm")
        )
        h = self._ffn_hidden(x, plan, impl)
        y, bias, _ = _dense(self.ffn_out, h, plan)
        return ops.bias_residual_layer_norm(
            y, bias, x, self.ffn_norm.weight, self.ffn_norm.bias, self.eps, impl=impl("bias_residual_layer_norm")
        )

    def forward_prenorm(self, x: torch.Tensor, normed: torch.Tensor, attend, plan: KernelPlan,
                        next_norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm: x (tokens, hidden) the residual stream, normed = this layer's attention input
        -> (x', next_norm(x')) with x' = x + attn + ffn; every norm is fused with its residual sum."""
        impl = lambda op: plan.impl(op, x.shape[0])  # noqa: E731
        y, bias = self._attention(normed, attend, plan)
        normed, x = ops.bias_residual_layer_norm(y, bias, x, self.ffn_norm.weight, self.ffn_norm.bias, self.eps,
                                                 impl=impl("bias_residual_layer_norm"), return_sum=True)
        y, bias, _ = _dense(self.ffn_out, self._ffn_hidden(normed, plan, impl), plan)
        normed, x = ops.bias_residual_layer_norm(y, bias, x, next_norm.weight, next_norm.bias, next_norm.eps,
                                                 impl=impl("bias_residual_layer_norm"), return_sum=True)
        return x, normed


class Embeddings(nn.Module):
    """LayerNorm(word + position + token type), by the family's data: positions counted from an
    offset (RoBERTa) or absent (ModernBERT: rotary), token types absent (DistilBERT, MPNet,
    ModernBERT) or all 0 (RoBERTa), ELECTRA's embedding_size then a projection to hidden_size."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        family = config.family
        width = config.embedding_size or config.hidden_size
        self.word = nn.Embedding(config.vocab_size, width)
        self.position = nn.Embedding(config.max_position_embeddings, width) if family.position_embeddings else None
        self.token_type = nn.Embedding(config.type_vocab_size, width) if family.token_type_table else None
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps, bias=config.norm_bias)
        self.project = nn.Linear(width, config.hidden_size) if config.embedding_size else None
        self.token_types = family.token_types
        self.position_offset = config.position_offset

    def forward(self, input_ids, token_type_ids, position_ids, plan: KernelPlan) -> torch.Tensor:
        """ids: (tokens,); position_ids: in-sequence positions from 0 -> (tokens, hidden)."""
        token_types = None
        if self.token_type is not None:  # RoBERTa-likes hold a table but every token is type 0
            token_types = token_type_ids if self.token_types and token_type_ids is not None else \
                torch.zeros_like(input_ids)
        if self.position is None:
            position_ids, position = None, None
        else:
            position_ids, position = position_ids + self.position_offset, self.position.weight
        x = ops.embedding_layer_norm(
            input_ids, token_types, position_ids, self.word.weight, position,
            None if self.token_type is None else self.token_type.weight, self.norm.weight, self.norm.bias,
            self.norm.eps,
            impl=plan.impl("embedding_layer_norm", input_ids.shape[0]),
        )
        if self.project is not None:
            x, _, _ = _dense(self.project, x, plan, defer=False)
        return x


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Position ids (total,) restarting at 0 for every packed sequence."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths, output_size=total)
    return torch.arange(total, device=cu_seqlens.device) - starts


def relative_position_bucket(distance: torch.Tensor, buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """MPNet's (T5's bidirectional) bucket of each key - query distance: half the buckets per sign,
    exact below buckets // 4, logarithmic up to max_distance."""
    half = buckets // 2
    n = -distance
    out = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    return out + torch.where(n < exact, n, large.clamp(max=half - 1))


def rotary_tables(theta: float, head_dim: int, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (positions, head_dim // 2) fp32, for rotate-half rotary embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.arange(positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., seq, head_dim) rotated at positions 0..seq-1; cos/sin (seq, head_dim // 2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        family = config.family
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, n) for n in range(config.num_hidden_layers))
        self.relative_bias = (nn.Embedding(config.relative_attention_num_buckets, config.num_attention_heads)
                              if family.relative_attention else None)
        self.final_norm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)
                           if family.modern else None)
        self.pre_norm = family.modern
        # The static default for direct use (training, export); a runner sets the engine's plan once.
        self.plan = KernelPlan()

    def relative_bias_table(self, max_seqlen: int) -> torch.Tensor:
        """MPNet: (heads, 2 * max_seqlen - 1) fp32, entry [h, d + max_seqlen - 1] the bias of key - query = d."""
        distance = torch.arange(1 - max_seqlen, max_seqlen, device=self.relative_bias.weight.device)
        buckets = relative_position_bucket(distance, self.config.relative_attention_num_buckets)
        return self.relative_bias.weight[buckets].float().t().contiguous()

    def rotary(self, theta: float, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (cos, sin) tables covering max_position_embeddings (or more, when asked)."""
        cache = self.__dict__.setdefault("_bertrt_rotary", {})
        key = (theta, str(device))
        tables = cache.get(key)
        if tables is None or tables[0].shape[0] < positions:
            size = max(positions, self.config.max_position_embeddings)
            tables = cache[key] = rotary_tables(theta, self.config.head_dim, size, device)
        return tables

    def _check_length(self, seq_len: int) -> None:
        if seq_len > self.config.max_tokens:
            raise ValueError(f"sequence length {seq_len} exceeds the model's limit of {self.config.max_tokens} tokens "
                             f"(max_position_embeddings {self.config.max_position_embeddings})")

    def _run_layers(self, x: torch.Tensor, attend, plan: KernelPlan) -> torch.Tensor:
        if not self.pre_norm:
            for layer in self.layers:
                x = layer(x, attend, plan)
            return x
        normed = x  # ModernBERT's first layer attends over the embeddings' norm
        norms = [layer.attn_norm for layer in self.layers[1:]] + [self.final_norm]
        for layer, next_norm in zip(self.layers, norms):
            x, normed = layer.forward_prenorm(x, normed, attend, plan, next_norm)
        return normed

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
        self._check_length(max_seqlen)
        plan = self.plan
        x = self.embeddings(input_ids, token_type_ids, position_ids, plan)
        # ragged: padding to the longest sequence would add over 10% work (padding-free kernels win there)
        ragged = (cu_seqlens.numel() - 1) * max_seqlen > 1.1 * total
        attention_impl = plan.impl("attention", total, ragged)
        shared = {}
        if self.relative_bias is not None:  # computed once, shared by every layer (as MPNet does)
            shared["rel_bias"] = self.relative_bias_table(max_seqlen)

        def attend(qkv: torch.Tensor, layer: EncoderLayer) -> torch.Tensor:
            options = dict(shared)
            if layer.window is not None:
                options["window"] = layer.window
            if layer.rope_theta is not None:
                options["rotary"] = self.rotary(layer.rope_theta, max_seqlen, qkv.device)
            # every implementation takes the options (the plan self-checks each with them)
            return ops.attention(qkv, cu_seqlens, max_seqlen, impl=attention_impl, **options)

        return self._run_layers(x, attend, plan)

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids, attention_mask: (batch, seq_len) -> hidden states (batch, seq_len, hidden).

        Padding positions get values too (they attend to the real tokens) but are meaningless.
        The family's attention options become a float mask for SDPA (relative bias, window) and a
        rotation of q and k (rotary); sequences are left-aligned (padding on the right).
        """
        batch, seq_len = input_ids.shape
        self._check_length(seq_len)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(seq_len, device=input_ids.device).expand(batch, seq_len)
        plan = self.plan
        x = self.embeddings(input_ids.reshape(-1), token_type_ids.reshape(-1), positions.reshape(-1), plan)
        key_mask = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, seq_len)
        index = torch.arange(seq_len, device=input_ids.device)
        distance = index[None, :] - index[:, None]  # key - query, (seq_len, seq_len)
        bias = None
        if self.relative_bias is not None:
            table = self.relative_bias_table(seq_len)  # (heads, 2 * seq_len - 1)
            bias = table[:, distance + seq_len - 1][None]  # (1, heads, seq, seq)

        def attend(qkv: torch.Tensor, layer: EncoderLayer) -> torch.Tensor:
            heads, head_dim = qkv.shape[2], qkv.shape[3]
            q, k, v = qkv.view(batch, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            if layer.rope_theta is not None:
                cos, sin = self.rotary(layer.rope_theta, seq_len, qkv.device)
                q, k = apply_rotary(q, cos[:seq_len], sin[:seq_len]), apply_rotary(k, cos[:seq_len], sin[:seq_len])
            mask = key_mask
            if layer.window is not None:
                mask = mask & (distance.abs() <= layer.window)[None, None]
            if bias is not None:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
                mask = mask + bias.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return out.transpose(1, 2).reshape(batch * seq_len, heads, head_dim)

        return self._run_layers(x, attend, plan).view(batch, seq_len, -1)

    def load_hf_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights named as ``weights.expected_shapes`` names them (BERT's layout)."""
        e = self.embeddings
        mine = {e.word: "embeddings.word_embeddings", e.position: "embeddings.position_embeddings",
                e.norm: "embeddings.LayerNorm", e.project: "embeddings_project", self.relative_bias:
                "encoder.relative_attention_bias", self.final_norm: "encoder.final_norm"}
        if self.config.family.token_type_table:
            mine[e.token_type] = "embeddings.token_type_embeddings"
        with torch.no_grad():
            for module, name in mine.items():
                _copy(module, state, name)
            for n, layer in enumerate(self.layers):
                p = f"encoder.layer.{n}."
                if p + "attention.self.qkv.weight" in state:  # fused in the checkpoint (ModernBERT's Wqkv)
                    _copy(layer.qkv, state, p + "attention.self.qkv")
                else:
                    projections = [p + f"attention.self.{proj}" for proj in ("query", "key", "value")]
                    layer.qkv.weight.copy_(torch.cat([state[name + ".weight"] for name in projections], 0))
                    layer.qkv.bias.copy_(torch.cat([state[name + ".bias"] for name in projections], 0))
                pairs = {
                    layer.attn_out: "attention.output.dense",
                    layer.attn_norm: "attention.output.LayerNorm",
                    layer.ffn_in: "intermediate.dense",
                    layer.ffn_out: "output.dense",
                    layer.ffn_norm: "output.LayerNorm",
                }
                for module, name in pairs.items():
                    _copy(module, state, p + name)


def _copy(module: nn.Module | None, state: dict[str, torch.Tensor], name: str) -> None:
    """module.weight (and .bias, when the module has one) from state[name + '.weight' / '.bias']."""
    if module is None:
        return
    module.weight.copy_(state[name + ".weight"])
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(state[name + ".bias"])
