"""INT8 GEMM with fused dequant + bias (+ GELU): Triton kernel and the torch path against int8_linear_ref.

The integer product is exact in every implementation (int32 in the kernel, float64 in the reference), so
results agree to the float rounding of the epilogue. Without a CUDA device the Triton kernel runs under
Triton's CPU interpreter (TRITON_INTERPRET=1, set here before any kernel module is imported; int8
``tl.dot`` is exact there; the interpreter's truncating fp32 -> bf16 conversion is replaced by
round-to-nearest-even in ``bertrt.kernels._utils.round_to``).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bertrt.ops.int8_linear import int8_linear_ref, int8_linear_torch, quantize_per_token  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ACTIVATIONS = ("none", "gelu", "gelu_tanh")
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _triton_int8_linear():
    pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test])")
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is set to something other than 1")
    from bertrt.kernels.int8_linear import int8_linear

    return int8_linear


def make(tokens, out_features, in_features, seed=0, with_bias=True, extreme=False):
    g = torch.Generator().manual_seed(seed)
    if extreme:  # every product at +-127 * 127: the accumulator needs all its bits
        x_q = torch.full((tokens, in_features), 127, dtype=torch.int8)
        w_q = torch.full((out_features, in_features), -127, dtype=torch.int8)
    else:
        x_q = torch.randint(-127, 128, (tokens, in_features), generator=g, dtype=torch.int8)
        w_q = torch.randint(-127, 128, (out_features, in_features), generator=g, dtype=torch.int8)
    x_scale = torch.rand(tokens, generator=g) * 0.02 + 1e-3
    w_scale = torch.rand(out_features, generator=g) * 0.02 + 1e-3
    bias = torch.randn(out_features, generator=g) if with_bias else None
    tensors = (x_q, x_scale, w_q, w_scale, bias)
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


def assert_close(actual, expected, out_dtype):
    assert actual.dtype == out_dtype and expected.dtype == out_dtype
    assert actual.shape == expected.shape
    atol, rtol = TOL[out_dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------------------ Triton kernel


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_triton_matches_ref(activation, out_dtype):
    int8_linear = _triton_int8_linear()
    args = make(33, 48, 100, seed=1)  # no dimension a multiple of the 64-wide tiles
    out = int8_linear(*args, activation=activation, out_dtype=out_dtype)
    assert out.is_contiguous()
    assert_close(out, int8_linear_ref(*args, activation=activation, out_dtype=out_dtype), out_dtype)


@pytest.mark.parametrize(
    "tokens,out_features,in_features",
    [(1, 40, 72), (17, 1, 64), (5, 130, 1), (70, 65, 129), (2, 3, 0)],
    ids=["single_token", "one_output", "k1", "multi_tile", "k0"],
)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_triton_awkward_shapes(tokens, out_features, in_features, with_bias):
    int8_linear = _triton_int8_linear()
    args = make(tokens, out_features, in_features, seed=tokens, with_bias=with_bias)
    assert_close(int8_linear(*args, activation="gelu"), int8_linear_ref(*args, activation="gelu"), torch.float32)


def test_triton_accumulation_is_exact_beyond_fp32():
    """K * 127 * 127 > 2^24: an fp32 accumulator would round, the int32 one must not."""
    int8_linear = _triton_int8_linear()
    x_q, _, w_q, _, _ = make(3, 5, 4096, extreme=True)
    ones_x = torch.ones(3, device=DEVICE)
    ones_w = torch.ones(5, device=DEVICE)
    out = int8_linear(x_q, ones_x, w_q, ones_w)
    expected = -127 * 127 * 4096  # -66,064,384: exactly representable in fp32 (a multiple of 4)
    assert torch.equal(out, torch.full((3, 5), float(expected), device=DEVICE))
    x_q, x_scale, w_q, w_scale, bias = make(9, 20, 2000, seed=3)
    x_q[0] = 127  # a row of maximal products next to random ones
    assert_close(int8_linear(x_q, x_scale, w_q, w_scale, bias),
                 int8_linear_ref(x_q, x_scale, w_q, w_scale, bias), torch.float32)


def test_triton_strided_operands_and_mixed_param_dtypes():
    int8_linear = _triton_int8_linear()
    x_q, x_scale, w_q, w_scale, bias = make(11, 24, 40, seed=4)
    w_t = w_q.t().contiguous().t()  # (N, K) view with strides (1, N): a transposed weight layout
    x_big = torch.zeros(11, 50, dtype=torch.int8, device=DEVICE)
    x_big[:, 5:45] = x_q
    x_view = x_big[:, 5:45]  # row stride 50
    args = (x_view, x_scale.half(), w_t, w_scale.bfloat16(), bias.bfloat16())
    assert_close(int8_linear(*args, activation="gelu_tanh", out_dtype=torch.float16),
                 int8_linear_ref(*args, activation="gelu_tanh", out_dtype=torch.float16), torch.float16)


def test_triton_quantized_linear_approximates_float_linear():
    """End to end on real-valued data: quantize, multiply, compare with the float product."""
    int8_linear = _triton_int8_linear()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(19, 96, generator=g)
    w = torch.randn(32, 96, generator=g) * 0.1
    bias = torch.randn(32, generator=g)
    x_q, x_scale = quantize_per_token(x)
    w_q, w_scale = quantize_per_token(w)  # per output channel = per row of w
    to = lambda *ts: tuple(t.to(DEVICE) for t in ts)
    out = int8_linear(*to(x_q, x_scale, w_q, w_scale, bias))
    torch.testing.assert_close(out.cpu(), torch.nn.functional.linear(x, w, bias), atol=0.05, rtol=0.05)


def test_triton_rejects_bad_inputs():
    int8_linear = _triton_int8_linear()
    x_q, x_scale, w_q, w_scale, bias = make(4, 8, 16)
    with pytest.raises(ValueError, match="activation"):
        int8_linear(x_q, x_scale, w_q, w_scale, bias, activation="relu")
    with pytest.raises(ValueError, match="float32"):
        int8_linear(x_q.float(), x_scale, w_q, w_scale, bias)
    with pytest.raises(ValueError, match=r"\(4, 16\) vs \(8, 15\)"):
        int8_linear(x_q, x_scale, w_q[:, :15], w_scale, bias)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        int8_linear(x_q, x_scale[:3], w_q, w_scale, bias)
    with pytest.raises(ValueError, match=r"\(7,\)"):
        int8_linear(x_q, x_scale, w_q, w_scale, bias[:7])
    with pytest.raises(ValueError, match="out_dtype"):
        int8_linear(x_q, x_scale, w_q, w_scale, bias, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="int64"):
        int8_linear(x_q, x_scale.long(), w_q, w_scale, bias)


def test_registry_resolves_the_triton_kernel():
    int8_linear = _triton_int8_linear()
    from bertrt.ops import registry

    registry._load.cache_clear()  # availability may have been cached before TRITON_INTERPRET was set
    assert registry.resolve("int8_linear", "triton") is int8_linear


# -------------------------------------------------------------------------------------------- torch path


@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_matches_ref(activation, out_dtype):
    args = make(33, 48, 100, seed=6)
    assert_close(int8_linear_torch(*args, activation=activation, out_dtype=out_dtype),
                 int8_linear_ref(*args, activation=activation, out_dtype=out_dtype), out_dtype)


@pytest.mark.parametrize("tokens,out_features,in_features", [(1, 8, 16), (24, 32, 64), (17, 5, 3)])
def test_torch_awkward_shapes(tokens, out_features, in_features):
    """(24, 32, 64) takes torch._int_mm on CUDA; the others the fp32 fallback (exact below 2^24)."""
    args = make(tokens, out_features, in_features, seed=7, with_bias=tokens != 1)
    assert_close(int8_linear_torch(*args), int8_linear_ref(*args), torch.float32)


# -- the packed CPU kernel (bertrt._C.int8_linear_packed): float x in, weights packed once -------------

def _packed_params():
    from bertrt.ops import registry

    reason = registry.availability("int8_linear")["cpu"]
    if reason:
        return [pytest.param("-", marks=pytest.mark.skip(reason=reason))]
    from bertrt.ops import cpu_kernels

    if not hasattr(cpu_kernels._C, "int8_linear_packed"):
        return [pytest.param("-", marks=pytest.mark.skip(reason="bertrt._C has no int8_linear_packed"))]
    supported = set(cpu_kernels.supported_isas())
    return [pytest.param(isa, id=f"cpu-{isa}", marks=() if isa in supported else
                         pytest.mark.skip(reason=f"this CPU cannot run the {isa} variant"))
            for isa in cpu_kernels.isa_variants()]


PACKED_SHAPES = [(1, 1, 1), (7, 33, 5), (13, 1152, 384), (129, 100, 301), (200, 48, 40), (3, 20, 70)]


@pytest.mark.parametrize("act_bits", [8, 7])
@pytest.mark.parametrize("quant", ["dynamic", "static"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", PACKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("isa", _packed_params())
def test_packed_matches_its_reference(isa, shape, activation, quant, act_bits):
    """Every ISA variant against int8_linear_packed_ref: the integer product is exact, so the only
    difference is the float epilogue's rounding. Odd K (zero-padded quads, and octs for 7-bit
    activations), N past a 16-wide panel, M past a 128-row block (and not a multiple of the 3-row
    tile); static with a negative zero point."""
    from bertrt.ops import cpu_kernels
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight

    m, n, k = shape
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g) * 3
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    args = (None, 0) if quant == "dynamic" else (0.03, -37)
    with cpu_kernels.use_isa(isa):  # the weight width this variant takes (8 on the VNNI loop)
        packed = pack_int8_weight(w_q, torch.rand(n, generator=g) * 0.01 + 1e-3, torch.randn(n, generator=g),
                                  act_bits, cpu_kernels.packed_weight_bits())
        out = cpu_kernels.int8_linear_packed(x, packed, activation, *args)
    expected = int8_linear_packed_ref(x, packed, activation, *args)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smoothquant"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", PACKED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("isa", _packed_params())
def test_packed_asymmetric_and_multiplier_match_the_reference(isa, shape, activation, smooth):
    """Per-token zero points (dynamic, 7-bit) and SmoothQuant's multiplier fused into the kernel's
    quantization: the same integers as the reference, so only the float epilogue may differ. Rows are
    one-sided (all positive, all negative) and mixed, and one row is constant (a zero range)."""
    from bertrt.ops import cpu_kernels
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight, quantize_per_token_asym

    m, n, k = shape
    g = torch.Generator().manual_seed(m * 7 + n * 3 + k)
    x = torch.randn(m, k, generator=g) * 3
    x[::3] = x[::3].abs() + 0.5
    x[1::5] = -x[1::5].abs()
    x[-1] = 0.25
    multiplier = torch.rand(k, generator=g) + 0.25 if smooth else None
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    with cpu_kernels.use_isa(isa):
        packed = pack_int8_weight(w_q, torch.rand(n, generator=g) * 0.01 + 1e-3, torch.randn(n, generator=g), 7,
                                  cpu_kernels.packed_weight_bits())
        out = cpu_kernels.int8_linear_packed(x, packed, activation, multiplier=multiplier, asymmetric=True)
    expected = int8_linear_packed_ref(x, packed, activation, multiplier=multiplier, asymmetric=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    centred, scale, zero = quantize_per_token_asym(x * multiplier if smooth else x)
    assert int(centred.abs().max()) <= 127 and int(zero.min()) >= -64 and int(zero.max()) <= 63
    # a one-sided row uses the whole 7-bit grid: its zero point sits at an end of [-64, 63]
    assert int(zero[0]) == -64


def test_packed_asymmetric_rejects_what_it_cannot_take():
    from bertrt.ops import registry

    if reason := registry.availability("int8_linear")["cpu"]:
        pytest.skip(f"int8_linear/cpu: {reason}")
    from bertrt.ops import cpu_kernels
    from bertrt.ops.int8_linear import pack_int8_weight

    w_q = torch.ones(4, 8, dtype=torch.int8)
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="7-bit only"):
        cpu_kernels.int8_linear_packed(x, pack_int8_weight(w_q, torch.ones(4), None, 8), asymmetric=True)
    with pytest.raises(ValueError, match="dynamic and 7-bit"):
        cpu_kernels.int8_linear_packed(x, pack_int8_weight(w_q, torch.ones(4), None, 7), "none", 0.1, 0,
                                       asymmetric=True)
    with pytest.raises(ValueError, match="multiplier"):
        cpu_kernels.int8_linear_packed(x, pack_int8_weight(w_q, torch.ones(4), None, 7), multiplier=torch.ones(7))


@pytest.mark.parametrize("isa", _packed_params())
def test_packed_7bit_activations_at_the_extremes(isa):
    """act_bits 7 sums two vpmaddubsw pair sums in int16 before vpmaddwd widens them: the largest
    operands (u = 127, |w| = 63 -> +-32004 per 16-bit lane, just inside int16) and the smallest, over a
    long K, must still give the exact integer product."""
    from bertrt.ops import cpu_kernels
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight

    k = 4101
    x = torch.ones(5, k)
    x[1] = -1.0  # every activation at -63
    x[2, ::2] = -1.0  # alternating extremes
    x[3] = 0.0  # all zero: the 1e-8 scale floor
    w_q = torch.full((19, k), 127, dtype=torch.int8)
    w_q[1] = -127
    w_q[2, 1::2] = -127
    packed = pack_int8_weight(w_q, torch.full((19,), 1e-3), None, act_bits=7)
    with cpu_kernels.use_isa(isa):
        out = cpu_kernels.int8_linear_packed(x, packed)
    expected = int8_linear_packed_ref(x, packed)
    assert expected[0, 0] == pytest.approx(k * 1e-3 * 127 / 63 * 63 * (1 / 63) * 63, rel=1e-5)
    torch.testing.assert_close(out, expected, atol=0, rtol=1e-6)


def test_packed_weight_layout_for_7bit_activations():
    from bertrt.ops.int8_linear import pack_int8_weight

    w_q = torch.arange(-90, 90, dtype=torch.int8).view(20, 9)
    packed = pack_int8_weight(w_q, torch.ones(20), act_bits=7)
    assert packed.act_bits == 7
    assert packed.data.shape == (2, 4, 16, 4)  # K = 9 -> 2 octs = 4 quads
    assert packed.data[1, 2, 3, 0] == packed.w_q[19, 8]
    assert packed.data.abs().max() <= 63
    assert (packed.data[1, 2, :, 1:] == 0).all() and (packed.data[:, 3] == 0).all()  # padding stays 0
    assert packed.col_sums[19] == packed.w_q[19].sum()
    with pytest.raises(ValueError, match="act_bits"):
        pack_int8_weight(w_q, torch.ones(20), act_bits=4)


def test_packed_weight_layout_and_7bit_requantization():
    from bertrt.ops.int8_linear import pack_int8_weight

    w_q = torch.arange(-60, 60, dtype=torch.int8).view(20, 6)
    w_q[0, 0] = 127
    packed = pack_int8_weight(w_q, torch.ones(20))
    assert packed.data.shape == (2, 2, 16, 4)  # 20 columns -> 2 panels, K = 6 -> 2 quads
    assert packed.w_q.abs().max() <= 63 and packed.w_q[0, 0] == 63
    assert packed.data[1, 1, 3, 1] == packed.w_q[19, 5] and (packed.data[1, 1, :, 2:] == 0).all()
    assert packed.col_sums[19] == packed.w_q[19].sum() and (packed.col_sums[20:] == 0).all()
    torch.testing.assert_close(packed.w_scale[:20], torch.full((20,), 127 / 63))


def test_packed_rejects_bad_inputs():
    from bertrt.ops import registry
    from bertrt.ops.int8_linear import pack_int8_weight

    with pytest.raises(ValueError, match="int8"):
        pack_int8_weight(torch.zeros(4, 4), torch.ones(4))
    with pytest.raises(ValueError, match=r"must be \(4,\)"):
        pack_int8_weight(torch.zeros(4, 4, dtype=torch.int8), torch.ones(3))
    if registry.availability("int8_linear")["cpu"]:
        pytest.skip("no CPU kernels")
    from bertrt.ops import cpu_kernels

    packed = pack_int8_weight(torch.ones(4, 8, dtype=torch.int8), torch.ones(4))
    with pytest.raises(ValueError, match=r"\(tokens, 8\) float32"):
        cpu_kernels.int8_linear_packed(torch.randn(2, 7), packed)
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.int8_linear_packed(torch.randn(2, 8).bfloat16(), packed)
    with pytest.raises(ValueError, match="positive"):
        cpu_kernels.int8_linear_packed(torch.randn(2, 8), packed, "none", 0.0)
    with pytest.raises(ValueError, match="zero point"):
        cpu_kernels.int8_linear_packed(torch.randn(2, 8), packed, "none", 0.1, 200)
    packed7 = pack_int8_weight(torch.ones(4, 8, dtype=torch.int8), torch.ones(4), act_bits=7)
    with pytest.raises(ValueError, match=r"zero point must be in \[-64, 63\]"):
        cpu_kernels.int8_linear_packed(torch.randn(2, 8), packed7, "none", 0.1, 100)


def test_packed_kernel_uses_vnni_where_the_cpu_has_it():
    from bertrt.ops import cpu_kernels, measure
    from bertrt.ops.gemm_choice import packed_available

    if packed_available() is not None:
        pytest.skip(packed_available())
    flags = set(measure.cpu_identity()[1])
    for isa in cpu_kernels.supported_isas():
        with cpu_kernels.use_isa(isa):
            expected = ("scalar" if isa == "scalar" else
                        "avx512-vnni" if isa != "avx2" and "avx512_vnni" in flags else "avx2")
            assert cpu_kernels.int8_packed_kernel() == expected


def test_packed_8bit_weights_are_exact_on_the_vnni_loop_and_refused_elsewhere():
    """weight_bits 8 keeps the checkpoint's weights: exact at the extremes (u8 255 x -128 and x 127 in
    every lane, K = 4101) where the loop is vpdpbusd, a clear error on the AVX2 tiles."""
    from bertrt.ops import cpu_kernels
    from bertrt.ops.gemm_choice import packed_available
    from bertrt.ops.int8_linear import int8_linear_packed_ref, pack_int8_weight

    if packed_available() is not None:
        pytest.skip(packed_available())
    k = 4101
    w_q = torch.full((20, k), 127, dtype=torch.int8)
    w_q[1::2] = -128
    packed = pack_int8_weight(w_q, torch.full((20,), 1e-3), None, 8, weight_bits=8)
    assert packed.weight_bits == 8 and torch.equal(packed.w_q, w_q) and int(packed.data.min()) == -128
    x = torch.full((5, k), 2.0)  # symmetric per token: every q = 127, u8 = 255
    x[3] = -2.0
    for isa in cpu_kernels.supported_isas():
        with cpu_kernels.use_isa(isa):
            if cpu_kernels.packed_weight_bits() == 8:
                out = cpu_kernels.int8_linear_packed(x, packed)
                torch.testing.assert_close(out, int8_linear_packed_ref(x, packed), atol=0, rtol=1e-6)
            else:
                with pytest.raises(ValueError, match="8-bit packed weights need the avx512-vnni loop"):
                    cpu_kernels.int8_linear_packed(x, packed)
    with pytest.raises(ValueError, match="weight_bits"):
        pack_int8_weight(w_q, torch.ones(20), weight_bits=6)
