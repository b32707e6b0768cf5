"""bias_residual_layer_norm: every implementation vs the reference, fp32 statistics."""

from __future__ import annotations

import pytest
import torch
from bertrt.ops import registry

from .op_harness import assert_close, device_for, implementation_params, reference, run

# Implementation families that take only some dtypes (none today: every family runs fp32/bf16/fp16)
DTYPES: dict[str, tuple[torch.dtype, ...]] = {}


def skip_unsupported(impl: str, dtype: torch.dtype) -> None:
    family = impl.split(":", 1)[0]
    if dtype not in DTYPES.get(family, (dtype,)):
        pytest.skip(f"{family} kernels do not take {dtype}")


SHAPES = [(1, 32), (5, 48), (67, 384), (3, 1000), (2, 768)]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", implementation_params("bias_residual_layer_norm"))
def test_bias_residual_layer_norm_matches_reference(impl, shape, dtype, with_bias):
    skip_unsupported(impl, dtype)
    generator = torch.Generator().manual_seed(2)
    tokens, hidden = shape
    # An offset mean and a large spread: the kind of activations that break one-pass variance.
    x = (torch.randn(tokens, hidden, generator=generator) * 4 + 3).to(dtype)
    residual = torch.randn(tokens, hidden, generator=generator).to(dtype)
    bias = torch.randn(hidden, generator=generator).to(dtype) if with_bias else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=generator)).to(dtype)
    beta = (0.1 * torch.randn(hidden, generator=generator)).to(dtype)
    args = (x, bias, residual, weight, beta, 1e-12)
    exact = reference("bias_residual_layer_norm", *args)
    torch_out = registry.resolve("bias_residual_layer_norm", "torch")(*args)
    device = device_for(impl)
    moved = [None if a is None else a.to(device) for a in args[:5]]
    out = run("bias_residual_layer_norm", impl, *moved, 1e-12)
    assert_close("bias_residual_layer_norm", impl, out, exact, torch_out, dtype, inputs=args)


def test_bias_residual_layer_norm_rejects_bad_inputs():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="residual must match"):
        registry.resolve("bias_residual_layer_norm", "ref")(x, None, torch.randn(3, 7), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="weight must be"):
        registry.resolve("bias_residual_layer_norm", "ref")(x, None, x, torch.ones(7), torch.zeros(8))
