"""GELU(x + bias) on the FFN intermediate: 1024 tokens x 4*hidden, exact (erf) and tanh; and the gated
(GeGLU) form at ModernBERT-base's shape."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, MODELS, cpu_implementations, gpu_implementations, resolve_cpu, resolve_gpu, time_gpu

OP = "bias_gelu"
TOKENS = 1024  # 8 sequences of 128


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_bias_gelu_cpu(benchmark, impl, model, dtype, approximate):
    fn, isa_scope = resolve_cpu(OP, impl)
    features = 4 * MODELS[model]["hidden"]
    torch.manual_seed(0)
    x = torch.randn(TOKENS, features).to(DTYPES[dtype])
    bias = torch.randn(features).to(DTYPES[dtype])
    benchmark.group = f"{OP} cpu {TOKENS}x{features} {dtype} {approximate}"
    with isa_scope:
        benchmark(fn, x, bias, approximate)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", gpu_implementations(OP))
def test_bias_gelu_gpu(benchmark, impl, model, dtype):
    fn = resolve_gpu(OP, impl)
    features = 4 * MODELS[model]["hidden"]
    x = torch.randn(8 * TOKENS, features, device="cuda").to(DTYPES[dtype])
    bias = torch.randn(features, device="cuda").to(DTYPES[dtype])
    benchmark.group = f"{OP} gpu {8 * TOKENS}x{features} {dtype}"
    time_gpu(benchmark, lambda: fn(x, bias, "none"))


# ModernBERT-base: hidden 768, intermediate 1152, GeGLU (Wi's output is 2 x 1152 = 2304 wide), no MLP bias
MODERN_INTERMEDIATE = 1152


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_gated_bias_gelu_cpu(benchmark, impl, dtype):
    fn, isa_scope = resolve_cpu(OP, impl)
    torch.manual_seed(0)
    x = torch.randn(TOKENS, 2 * MODERN_INTERMEDIATE).to(DTYPES[dtype])
    benchmark.group = f"{OP} gated cpu {TOKENS}x{2 * MODERN_INTERMEDIATE} {dtype} (modernbert-base)"
    with isa_scope:
        benchmark(lambda: fn(x, None, "none", gated=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("impl", gpu_implementations(OP))
def test_gated_bias_gelu_gpu(benchmark, impl, dtype):
    fn = resolve_gpu(OP, impl)
    x = torch.randn(8 * TOKENS, 2 * MODERN_INTERMEDIATE, device="cuda").to(DTYPES[dtype])
    benchmark.group = f"{OP} gated gpu {8 * TOKENS}x{2 * MODERN_INTERMEDIATE} {dtype} (modernbert-base)"
    time_gpu(benchmark, lambda: fn(x, None, "none", gated=True))
