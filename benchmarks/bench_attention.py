"""Variable-length attention: every implementation at MiniLM / bert-base head shapes."""

from __future__ import annotations

import pytest
import torch
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
