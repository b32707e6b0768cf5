"""The encoder's GEMMs: bertrt's packed CPU GEMM (bias and GELU fused) against torch's F.linear (+GELU).

Shapes are each model's qkv, attn_out, ffn_in (with GELU) and ffn_out at 1024 tokens (8 x 128).
"""

from __future__ import annotations

import pytest
import torch
from bertrt import ops
from conftest import MODELS, cpu_implementations, resolve_cpu

OP = "linear"
TOKENS = 1024


def _layers(hidden: int) -> dict[str, tuple[int, int, str]]:
    return {"qkv": (3 * hidden, hidden, "none"), "attn_out": (hidden, hidden, "none"),
            "ffn_in": (4 * hidden, hidden, "gelu"), "ffn_out": (hidden, 4 * hidden, "none")}


@pytest.mark.parametrize("layer", ["qkv", "attn_out", "ffn_in", "ffn_out"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", [p for p in cpu_implementations(OP) if p.id in ("torch",) or p.id.startswith("cpu")])
def test_linear_cpu(benchmark, impl, model, layer):
    fn, isa_scope = resolve_cpu(OP, impl)
    n, k, activation = _layers(MODELS[model]["hidden"])[layer]
    torch.manual_seed(0)
    x = torch.randn(TOKENS, k)
    weight, bias = torch.randn(n, k) / k**0.5, torch.randn(n)
    # the cpu kernel gets the weight packed once, as the encoder holds it
    w = ops.pack_weight(weight, bias) if impl[0] == "cpu" else weight
    b = None if impl[0] == "cpu" else bias
    benchmark.group = f"{OP} cpu {TOKENS}x{n}x{k} {activation}"
    benchmark.extra_info["gflop"] = 2 * TOKENS * n * k / 1e9
    with isa_scope:
        benchmark(fn, x, w, b, activation)
