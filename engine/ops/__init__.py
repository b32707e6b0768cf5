"""Encoder ops: each module holds ``<op>_ref`` (plain PyTorch), ``<op>_torch`` and the dispatcher ``<op>``."""

from .attention import attention, attention_ref
from .bias_gelu import bias_gelu, bias_gelu_ref
from .bias_residual_layer_norm import bias_residual_layer_norm, bias_residual_layer_norm_ref
from .embedding_layer_norm import embedding_layer_norm, embedding_layer_norm_ref
from .int8_linear import int8_linear, int8_linear_ref
from .linear import PackedWeight, linear, linear_ref, pack_weight
from .registry import KernelUnavailable, availability

OPS = ("attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm", "int8_linear", "linear")

__all__ = [
    "OPS", "KernelUnavailable", "availability", "attention", "attention_ref", "bias_gelu", "bias_gelu_ref",
    "bias_residual_layer_norm", "bias_residual_layer_norm_ref", "embedding_layer_norm",
    "embedding_layer_norm_ref", "int8_linear", "int8_linear_ref", "linear", "linear_ref", "PackedWeight",
    "pack_weight",
]
