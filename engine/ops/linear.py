"""Linear layer with a fused epilogue: y = act(x @ W^T + bias).

    x:          (tokens, in_features); the cpu implementation takes float32 only
    weight:     (out_features, in_features), or a ``PackedWeight`` from ``pack_weight`` (packed once,
                reused every call: what the encoder does)
    bias:       (out_features,) or None
    activation: "none" | "gelu" (erf) | "gelu_tanh", applied after the bias
    returns     (tokens, out_features) in x's dtype

The cpu implementation is bertrt's own GEMM (``csrc/cpu/linear.cpp``); GPUs keep cuBLAS through
``linear_torch``, so there is no cuda or triton implementation of this op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import pick

ACTIVATIONS = ("none", "gelu", "gelu_tanh")
PANEL = 16  # outputs per packed panel; fixed in csrc/cpu/linear.cpp


@dataclass(frozen=True)
class PackedWeight:
    """A weight in the CPU GEMM's layout.

    data:   (ceil(out_features / 16), in_features, 16) float32; panel p holds W[16p + j, k] at [p, k, j],
            zero padded past out_features
    bias:   (ceil(out_features / 16) * 16,) float32 zero padded, or None
    source: the (out_features, in_features) weight it was packed from (not copied), for the
            reference implementations
    """

    data: torch.Tensor
    bias: torch.Tensor | None
    source: torch.Tensor
    source_bias: torch.Tensor | None

    @property
    def out_features(self) -> int:
        return self.source.shape[0]

    @property
    def in_features(self) -> int:
        return self.source.shape[1]


def pack_weight(weight: torch.Tensor, bias: torch.Tensor | None = None) -> PackedWeight:
    """weight (out_features, in_features) and bias (out_features,) or None -> PackedWeight."""
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight must be (out_features, in_features) with both >= 1, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    n, k = weight.shape
    panels = -(-n // PANEL)
    with torch.no_grad():
        padded = torch.zeros(panels * PANEL, k, dtype=torch.float32, device=weight.device)
        padded[:n] = weight.detach()
        data = padded.view(panels, PANEL, k).transpose(1, 2).contiguous()
        padded_bias = None
        if bias is not None:
            padded_bias = torch.zeros(panels * PANEL, dtype=torch.float32, device=weight.device)
            padded_bias[:n] = bias.detach()
    return PackedWeight(data, padded_bias, weight, bias)


def _unpack(weight, bias):
    if isinstance(weight, PackedWeight):
        if bias is not None:
            raise ValueError("pass the bias to pack_weight, not with a PackedWeight")
        return weight.source, weight.source_bias
    return weight, bias


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x (tokens, K) and weight (N, K) must agree on K: {tuple(x.shape)} vs {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def _activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    return y


def linear_ref(x, weight, bias=None, activation: str = "none") -> torch.Tensor:
    """float64 product, then the epilogue in float32."""
    weight, bias = _unpack(weight, bias)
    _check(x, weight, bias, activation)
    y = (x.double() @ weight.double().t()).float()
    if bias is not None:
        y = y + bias.float()
    return _activate(y, activation).to(x.dtype)


def linear_torch(x, weight, bias=None, activation: str = "none") -> torch.Tensor:
    weight, bias = _unpack(weight, bias)
    _check(x, weight, bias, activation)
    return _activate(F.linear(x, weight, bias), activation)


def linear(x, weight, bias=None, activation: str = "none", impl: str = "auto") -> torch.Tensor:
    return pick("linear", x.device.type, impl)(x, weight, bias, activation)
