"""Embedding gather (word + position + token type) + LayerNorm: 1024 tokens, BERT vocabulary; and the
word-only, beta-free form at ModernBERT-base's shape."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, MODELS, cpu_implementations, gpu_implementations, resolve_cpu, resolve_gpu, time_gpu

OP = "embedding_layer_norm"
TOKENS, VOCAB, POSITIONS = 1024, 30522, 512


def make_inputs(tokens: int, hidden: int, dtype: torch.dtype, device: str = "cpu"):
    torch.manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (tokens,), device=device)
    token_type_ids = torch.zeros(tokens, dtype=torch.long, device=device)
    position_ids = torch.arange(tokens, device=device) % 128
    word = torch.randn(VOCAB, hidden, device=device).to(dtype)
    position = torch.randn(POSITIONS, hidden, device=device).to(dtype)
    token_type = torch.randn(2, hidden, device=device).to(dtype)
    weight, bias = (torch.randn(hidden, device=device).to(dtype) for _ in range(2))
    return input_ids, token_type_ids, position_ids, word, position, token_type, weight, bias


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_embedding_layer_norm_cpu(benchmark, impl, model, dtype):
    fn, isa_scope = resolve_cpu(OP, impl)
    hidden = MODELS[model]["hidden"]
    args = make_inputs(TOKENS, hidden, DTYPES[dtype])
    benchmark.group = f"{OP} cpu {TOKENS}x{hidden} {dtype}"
    with isa_scope:
        benchmark(fn, *args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", gpu_implementations(OP))
def test_embedding_layer_norm_gpu(benchmark, impl, model, dtype):
    fn = resolve_gpu(OP, impl)
    hidden = MODELS[model]["hidden"]
    args = make_inputs(8 * TOKENS, hidden, DTYPES[dtype], "cuda")
    benchmark.group = f"{OP} gpu {8 * TOKENS}x{hidden} {dtype}"
    time_gpu(benchmark, lambda: fn(*args))


# ModernBERT-base: word embeddings only (rotary positions, no token types), LayerNorm without beta
MODERN_VOCAB, MODERN_HIDDEN = 50368, 768


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_word_only_embedding_layer_norm_cpu(benchmark, impl, dtype):
    fn, isa_scope = resolve_cpu(OP, impl)
    torch.manual_seed(0)
    input_ids = torch.randint(0, MODERN_VOCAB, (TOKENS,))
    word = torch.randn(MODERN_VOCAB, MODERN_HIDDEN).to(DTYPES[dtype])
    weight = torch.randn(MODERN_HIDDEN).to(DTYPES[dtype])
    benchmark.group = f"{OP} word-only nobeta cpu {TOKENS}x{MODERN_HIDDEN} {dtype} (modernbert-base)"
    with isa_scope:
        benchmark(fn, input_ids, None, None, word, None, None, weight, None, 1e-5)
