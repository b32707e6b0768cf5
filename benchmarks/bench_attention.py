"""Variable-length attention: every implementation at MiniLM / bert-base head shapes, and ModernBERT-like
layers (rotary, rotary + a 64-token window) on one long sequence: our cpu kernel vs attention_torch."""

from __future__ import annotations

import pytest
import torch
from bertrt.ops import registry
from conftest import (
    BATCHES,
    DTYPES,
    MODELS,
    cpu_implementations,
    gpu_implementations,
    packed_qkv,
    resolve_cpu,
    resolve_gpu,
    time_gpu,
)

OP = "attention"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_attention_cpu(benchmark, impl, model, batch, dtype):
    fn, isa_scope = resolve_cpu(OP, impl)
    shape = MODELS[model]
    torch.manual_seed(0)
    qkv, cu, max_len = packed_qkv(BATCHES[batch], shape["heads"], shape["head_dim"], DTYPES[dtype])
    benchmark.group = f"{OP} cpu {model} {batch} {dtype}"
    with isa_scope:
        benchmark(fn, qkv, cu, max_len)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", gpu_implementations(OP))
def test_attention_gpu(benchmark, impl, model, batch, dtype):
    fn = resolve_gpu(OP, impl)
    shape = MODELS[model]
    torch.manual_seed(0)
    qkv, cu, max_len = packed_qkv(BATCHES[batch] * 8, shape["heads"], shape["head_dim"], DTYPES[dtype], "cuda")
    benchmark.group = f"{OP} gpu {model} 8x{batch} {dtype}"
    time_gpu(benchmark, lambda: fn(qkv, cu, max_len))


# ---- ModernBERT-like layers: rotary on every layer, a 128-token window (w = 64) on the local ones ------
# One sequence of 512 / 2048 / 8192 tokens, heads 12 x head_dim 64, fp32. "global" = rotary alone,
# "local" = rotary + window 64, "local-no-rotary" = the window alone (what the fused rotary costs).
# Compares our cpu kernel with attention_torch (padded SDPA; block-local SDPA for the window). The
# figures to read are extra_info["us_per_token"] (median) and "us_per_token_min"; 8192 tokens are marked slow.
MODERNBERT_LAYERS = {"global": ("rotary",), "local": ("rotary", "window"), "local-no-rotary": ("window",)}
MODERNBERT_TOKENS = (512, 2048, 8192)
MODERNBERT_WINDOW = 64


def modernbert_options(names, max_len: int, head_dim: int = 64) -> dict:
    options = {}
    if "rotary" in names:
        inverse = 1.0 / 160000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inverse)
        options["rotary"] = (angles.cos(), angles.sin())
    if "window" in names:
        options["window"] = MODERNBERT_WINDOW
    return options


@pytest.mark.parametrize("layer", list(MODERNBERT_LAYERS))
@pytest.mark.parametrize("tokens", [pytest.param(t, marks=[pytest.mark.slow] if t > 2048 else []) for t in
                                    MODERNBERT_TOKENS])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_attention_modernbert_cpu(benchmark, impl, tokens, layer):
    if registry.availability(OP)[impl] is not None:
        pytest.skip(f"{OP}/{impl}: {registry.availability(OP)[impl]}")
    fn = registry.resolve(OP, impl)
    torch.manual_seed(0)
    qkv, cu, max_len = packed_qkv([tokens], 12, 64, torch.float32)
    options = modernbert_options(MODERNBERT_LAYERS[layer], max_len)
    benchmark.group = f"{OP} cpu modernbert {tokens} tokens"
    rounds = 3 if tokens * (tokens if layer == "global" else 2 * MODERNBERT_WINDOW) > 2048 * 2048 else 10
    benchmark.pedantic(fn, args=(qkv, cu, max_len), kwargs=options, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info["us_per_token"] = benchmark.stats.stats.median / tokens * 1e6
    benchmark.extra_info["us_per_token_min"] = benchmark.stats.stats.min / tokens * 1e6  # shared-machine noise
