"""LayerNorm(x + bias + residual): 1024 tokens x hidden; and the pre-norm form (return_sum, no beta) at
ModernBERT-base's shape."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, MODELS, cpu_implementations, gpu_implementations, resolve_cpu, resolve_gpu, time_gpu

OP = "bias_residual_layer_norm"
TOKENS = 1024


def make_inputs(tokens: int, hidden: int, dtype: torch.dtype, device: str = "cpu"):
    torch.manual_seed(0)
    x, residual = (torch.randn(tokens, hidden, device=device).to(dtype) for _ in range(2))
    bias, weight, beta = (torch.randn(hidden, device=device).to(dtype) for _ in range(3))
    return x, bias, residual, weight, beta


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_bias_residual_layer_norm_cpu(benchmark, impl, model, dtype):
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
def test_bias_residual_layer_norm_gpu(benchmark, impl, model, dtype):
    fn = resolve_gpu(OP, impl)
    hidden = MODELS[model]["hidden"]
    args = make_inputs(8 * TOKENS, hidden, DTYPES[dtype], "cuda")
    benchmark.group = f"{OP} gpu {8 * TOKENS}x{hidden} {dtype}"
    time_gpu(benchmark, lambda: fn(*args))


# ModernBERT-base (hidden 768): pre-norm, so the LayerNorm also returns the residual sum; no bias, no beta
MODERN_HIDDEN = 768


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", cpu_implementations(OP))
def test_prenorm_layer_norm_cpu(benchmark, impl, dtype):
    fn, isa_scope = resolve_cpu(OP, impl)
    x, _, residual, weight, _ = make_inputs(TOKENS, MODERN_HIDDEN, DTYPES[dtype])
    benchmark.group = f"{OP} return_sum nobeta cpu {TOKENS}x{MODERN_HIDDEN} {dtype} (modernbert-base)"
    with isa_scope:
        benchmark(lambda: fn(x, None, residual, weight, None, 1e-5, return_sum=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("impl", gpu_implementations(OP))
def test_prenorm_layer_norm_gpu(benchmark, impl, dtype):
    fn = resolve_gpu(OP, impl)
    x, _, residual, weight, _ = make_inputs(8 * TOKENS, MODERN_HIDDEN, DTYPES[dtype], "cuda")
    benchmark.group = f"{OP} return_sum nobeta gpu {8 * TOKENS}x{MODERN_HIDDEN} {dtype} (modernbert-base)"
    time_gpu(benchmark, lambda: fn(x, None, residual, weight, None, 1e-5, return_sum=True))
