"""linear: bertrt's packed CPU GEMM (every ISA variant) and torch vs linear_ref, plus the encoder path."""

from __future__ import annotations

import pytest
import torch
from bertrt import ops
from bertrt.model import load_checkpoint
from bertrt.ops import registry
from bertrt.ops.plan import KernelPlan, OpChoice

from .op_harness import assert_close, implementation_params, reference, run

# GPUs keep cuBLAS (linear_torch): the op has no triton or cuda implementation to test.
IMPLS = [p for p in implementation_params("linear") if p.id == "torch" or p.id.startswith("cpu")]

# (M, N, K): length-1 everything, odd sizes, N not a multiple of the 16-wide panel, K over several
# depth blocks (384 deep) and not a multiple of 8, M over one 128-row block with a ragged tail.
SHAPES = [(1, 1, 1), (7, 33, 5), (13, 1152, 384), (129, 100, 300), (5, 17, 1000), (200, 48, 40), (3, 384, 1536)]


def _inputs(m, n, k, with_bias, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator)
    weight = torch.randn(n, k, generator=generator) / k**0.5
    bias = torch.randn(n, generator=generator) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_matches_reference(impl, shape, with_bias, activation):
    x, weight, bias = _inputs(*shape, with_bias)
    exact = reference("linear", x, weight, bias, activation)
    torch_out = registry.resolve("linear", "torch")(x, weight, bias, activation)
    out = run("linear", impl, x, weight, bias, activation)
    assert_close("linear", impl, out, exact, torch_out, torch.float32)
    packed = ops.pack_weight(weight, bias)
    out = run("linear", impl, x, packed, None, activation)
    assert_close("linear", impl, out, exact, torch_out, torch.float32)


@pytest.mark.parametrize("impl", [p for p in IMPLS if p.id.startswith("cpu")])
def test_linear_reads_strided_rows(impl):
    """x may be a column slice of a wider tensor (rows further apart than K)."""
    x, weight, bias = _inputs(9, 40, 24, True)
    wide = torch.randn(9, 31)
    wide[:, 3:27] = x
    view = wide[:, 3:27]
    assert view.stride(0) == 31
    out = run("linear", impl, view, ops.pack_weight(weight, bias), None, "gelu")
    torch.testing.assert_close(out, reference("linear", x, weight, bias, "gelu"), atol=1e-5, rtol=1e-5)


def test_packed_weight_layout():
    weight = torch.arange(20 * 3, dtype=torch.float32).view(20, 3)
    packed = ops.pack_weight(weight, torch.arange(20.0))
    assert packed.data.shape == (2, 3, 16)
    assert packed.data[1, 2, 3] == weight[19, 2]
    assert (packed.data[1, :, 4:] == 0).all() and (packed.bias[20:] == 0).all()
    assert (packed.out_features, packed.in_features) == (20, 3)


def test_linear_rejects_bad_inputs():
    x, weight, bias = _inputs(4, 8, 6, True)
    cpu = registry.availability("linear")["cpu"] is None
    impls = ["ref", "torch"] + (["cpu"] if cpu else [])
    for impl in impls:
        fn = registry.resolve("linear", impl)
        with pytest.raises(ValueError, match="activation"):
            fn(x, weight, bias, "relu")
        with pytest.raises(ValueError, match="agree on K|must be \\(tokens, 6\\)"):
            fn(torch.randn(4, 5), weight, bias, "none")
        with pytest.raises(ValueError, match="pass the bias to pack_weight"):
            fn(x, ops.pack_weight(weight), bias, "none")
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        ops.pack_weight(weight, torch.randn(7))
    if cpu:
        with pytest.raises(ValueError, match="float32"):
            registry.resolve("linear", "cpu")(x.bfloat16(), weight.bfloat16(), None, "none")


@pytest.mark.skipif(registry.availability("linear")["cpu"] is not None, reason="bertrt._C has no linear here")
def test_encoder_with_packed_gemm_matches_torch_gemm_and_repacks(tiny_model_dirs):
    model = load_checkpoint(tiny_model_dirs["embed"], device="cpu").model
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 1, 12]
    ids = torch.randint(1000, 30000, (sum(lengths),), generator=generator)
    cu = torch.tensor([0, 5, 6, 18], dtype=torch.int32)

    def forward(gemm):
        model.encoder.plan = KernelPlan(gemm=OpChoice("gemm", ((2048, gemm),), "test"))
        with torch.inference_mode():
            return model.forward_packed(ids, cu, max(lengths))

    torch.testing.assert_close(forward("cpu"), forward("torch"), atol=1e-5, rtol=1e-5)
    # an in-place weight update (fine-tuning, quantize_ round trips) must not leave a stale packed copy
    with torch.no_grad():
        for layer in model.encoder.layers if hasattr(model, "encoder") else model.layers:
            layer.ffn_in.weight.mul_(0.5)
    torch.testing.assert_close(forward("cpu"), forward("torch"), atol=1e-5, rtol=1e-5)
