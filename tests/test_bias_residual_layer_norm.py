"""bias_residual_layer_norm: every implementation vs the reference, fp32 statistics; the options of
pre-norm families (return_sum, no residual, no beta: ModernBERT) too."""

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


OPTION_SHAPES = [(1, 24), (129, 100), (3, 768)]
# (residual given, beta given, return_sum): a final norm / the first pre-norm (no residual), a bias-free
# LayerNorm (ModernBERT's norm_bias=False), the pre-norm residual stream (return_sum) and all at once
OPTIONS = {
    "noresidual": (False, True, False),
    "nobeta": (True, False, False),
    "sum": (True, True, True),
    "sum-nobeta": (True, False, True),
    "noresidual-nobeta-sum": (False, False, True),
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", OPTION_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", implementation_params("bias_residual_layer_norm"))
def test_bias_residual_layer_norm_options_match_reference(impl, shape, dtype, with_bias, option):
    skip_unsupported(impl, dtype)
    with_residual, with_beta, return_sum = OPTIONS[option]
    generator = torch.Generator().manual_seed(5)
    tokens, hidden = shape
    x = (torch.randn(tokens, hidden, generator=generator) * 4 + 3).to(dtype)
    residual = torch.randn(tokens, hidden, generator=generator).to(dtype) if with_residual else None
    bias = torch.randn(hidden, generator=generator).to(dtype) if with_bias else None
    weight = (1 + 0.1 * torch.randn(hidden, generator=generator)).to(dtype)
    beta = (0.1 * torch.randn(hidden, generator=generator)).to(dtype) if with_beta else None
    args = (x, bias, residual, weight, beta, 1e-5)
    options = {"return_sum": True} if return_sum else {}
    exact = reference("bias_residual_layer_norm", *args, **options)
    torch_out = registry.resolve("bias_residual_layer_norm", "torch")(*args, **options)
    device = device_for(impl)
    moved = [None if a is None else a.to(device) for a in args[:5]]
    out = run("bias_residual_layer_norm", impl, *moved, 1e-5, **options)
    if not return_sum:
        assert_close("bias_residual_layer_norm", impl, out, exact, torch_out, dtype, inputs=args)
        return
    assert isinstance(out, tuple) and len(out) == 2, f"{impl}: return_sum=True must return (normed, summed)"
    assert_close("bias_residual_layer_norm", impl, out[0], exact[0], torch_out[0], dtype, inputs=args)
    # the sum: one fp32 sum rounded once to the dtype (torch's own rounds per addition)
    assert_close("bias_residual_layer_norm", impl, out[1], exact[1], torch_out[1], dtype)
    if dtype == torch.float32:  # and it is the sum the normed output was computed from
        renormed = reference("bias_residual_layer_norm", out[1].cpu(), None, None, weight, beta, 1e-5)
        assert_close("bias_residual_layer_norm", impl, out[0], renormed, torch_out[0], dtype,
                     inputs=(out[1].cpu(), None, None, weight, beta, 1e-5))


def test_bias_residual_layer_norm_rejects_bad_inputs():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="residual must match"):
        registry.resolve("bias_residual_layer_norm", "ref")(x, None, torch.randn(3, 7), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="weight must be"):
        registry.resolve("bias_residual_layer_norm", "ref")(x, None, x, torch.ones(7), torch.zeros(8))
