"""bias_gelu: every implementation vs bias_gelu_ref, exact and tanh GELU, with and without bias, plain and
gated (GeGLU: ModernBERT's MLP, first half activated, second half the gate)."""

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


SHAPES = [(1, 1), (7, 33), (129, 100), (4, 1536)]
# gated: (tokens, 2 * I), odd I included (37: no vector width divides it); 2304 = ModernBERT-base's Wi out
GATED_SHAPES = [(1, 2), (7, 2 * 37), (129, 2 * 50), (3, 2304)]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", implementation_params("bias_gelu"))
def test_bias_gelu_matches_reference(impl, shape, dtype, with_bias, approximate):
    skip_unsupported(impl, dtype)
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=generator) * 3).to(dtype)
    bias = torch.randn(shape[1], generator=generator).to(dtype) if with_bias else None
    exact = reference("bias_gelu", x, bias, approximate)
    torch_out = registry.resolve("bias_gelu", "torch")(x, bias, approximate)
    device = device_for(impl)
    out = run("bias_gelu", impl, x.to(device), None if bias is None else bias.to(device), approximate)
    assert_close("bias_gelu", impl, out, exact, torch_out, dtype, inputs=(x, bias, approximate))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", GATED_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", implementation_params("bias_gelu"))
def test_gated_bias_gelu_matches_reference(impl, shape, dtype, with_bias, approximate):
    skip_unsupported(impl, dtype)
    generator = torch.Generator().manual_seed(11)
    x = (torch.randn(*shape, generator=generator) * 3).to(dtype)
    bias = torch.randn(shape[1], generator=generator).to(dtype) if with_bias else None
    exact = reference("bias_gelu", x, bias, approximate, gated=True)
    assert exact.shape == (shape[0], shape[1] // 2)
    torch_out = registry.resolve("bias_gelu", "torch")(x, bias, approximate, gated=True)
    device = device_for(impl)
    out = run("bias_gelu", impl, x.to(device), None if bias is None else bias.to(device), approximate, gated=True)
    assert_close("bias_gelu", impl, out, exact, torch_out, dtype, inputs=(x, bias, approximate),
                 options={"gated": True})


def test_gated_bias_gelu_is_transformers_geglu():
    """The half order of transformers' ModernBertMLP: ``input, gate = Wi(x).chunk(2, -1); act(input) * gate``."""
    x = torch.randn(5, 2 * 37)
    value, gate = x.chunk(2, dim=-1)
    expected = torch.nn.functional.gelu(value) * gate
    torch.testing.assert_close(registry.resolve("bias_gelu", "ref")(x, None, "none", gated=True), expected)


@pytest.mark.parametrize("impl", implementation_params("bias_gelu"))
def test_gated_bias_gelu_rejects_an_odd_last_dim(impl):
    device = device_for(impl)
    with pytest.raises(ValueError, match="even"):
        run("bias_gelu", impl, torch.randn(3, 7, device=device), None, "none", gated=True)


def test_bias_gelu_rejects_bad_inputs():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="approximate"):
        registry.resolve("bias_gelu", "ref")(x, None, "sigmoid")
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        registry.resolve("bias_gelu", "ref")(x, torch.randn(7), "none")
