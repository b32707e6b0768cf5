"""CPU kernels (bertrt._C): ISA dispatch, and every runnable ISA variant against ``<op>_ref``.

Variants this CPU cannot run (e.g. AVX-512/AMX on an AVX2-only machine) are listed, refused with a
clear error, and their numerics are not exercised here: the parametrised tests cover
``supported_isas()`` only.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from bertrt.ops.attention import attention_ref
from bertrt.ops.bias_gelu import bias_gelu_ref
from bertrt.ops.bias_residual_layer_norm import bias_residual_layer_norm_ref
from bertrt.ops.embedding_layer_norm import embedding_layer_norm_ref
from bertrt.ops.int8_linear import int8_linear_ref, quantize_per_token

ck = pytest.importorskip("bertrt.ops.cpu_kernels", reason="bertrt._C (the CPU extension) is not built")

SUPPORTED = ck.supported_isas()
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Kernel vs fp32 reference, both rounded to the output dtype: a couple of ulps of the dtype.
TOLERANCE = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


@pytest.fixture(params=SUPPORTED)
def isa(request):
    with ck.use_isa(request.param):
        yield request.param


def assert_matches(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **TOLERANCE[dtype])


def packed(lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype, spread: float = 1.0):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    qkv = (torch.randn(int(cu[-1]), 3, heads, head_dim) * spread).to(dtype)
    return qkv, cu, max(lengths)


# ---- dispatch ---------------------------------------------------------------------------------------


def test_variants_are_listed_best_first():
    variants = ck.isa_variants()
    assert variants == ["amx", "avx512", "avx2", "scalar"]
    assert SUPPORTED[-1] == "scalar"
    assert SUPPORTED == [v for v in variants if v in SUPPORTED]  # same order, a subset
    assert ck.active_isa() in SUPPORTED


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown CPU ISA variant 'sse9'"):
        with ck.use_isa("sse9"):
            pass


@pytest.mark.parametrize("name", ["amx", "avx512", "avx2"])
def test_unsupported_variant_is_refused_with_reason(name):
    if name in SUPPORTED:
        pytest.skip(f"{name} runs on this CPU")
    with pytest.raises(ValueError, match=f"'{name}' is not supported here: .*lacks"):
        with ck.use_isa(name):
            pass


def test_use_isa_is_scoped_and_nests():
    default = ck.active_isa()
    with ck.use_isa("scalar"):
        assert ck.active_isa() == "scalar"
        with ck.use_isa(SUPPORTED[0]):
            assert ck.active_isa() == SUPPORTED[0]
        assert ck.active_isa() == "scalar"
    assert ck.active_isa() == default


def test_fast_exp_accuracy(isa):
    x = torch.linspace(-87.0, 88.0, 200_001)
    got = ck.fast_exp(x).double()
    want = torch.exp(x.double())
    rel = ((got - want).abs() / want).max().item()
    assert rel < 3e-7, f"{isa}: max relative error {rel:.3g} (fp32 ulp is 1.2e-7)"
    edge = ck.fast_exp(torch.tensor([-1e4, -200.0, 0.0, 200.0, float("inf"), float("-inf")]))
    assert edge.tolist() == [0.0, 0.0, 1.0, math.inf, math.inf, 0.0]


# ---- attention --------------------------------------------------------------------------------------

ATTENTION_CASES = [
    # (lengths, heads, head_dim)
    ([1], 1, 32),
    ([7], 2, 64),
    ([5, 1, 33, 128, 17], 3, 32),
    ([129, 64, 3], 2, 80),
    ([31, 8], 2, 72),
    ([19, 40], 3, 40),
    ([13, 27], 2, 33),
    ([300, 2], 1, 128),  # more keys than one key block: the online-softmax rescale
    ([200], 1, 64),  # one (sequence, head) pair: query rows split across threads
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,heads,head_dim", ATTENTION_CASES)
def test_attention_matches_ref(isa, dtype, lengths, heads, head_dim):
    torch.manual_seed(0)
    qkv, cu, max_len = packed(lengths, heads, head_dim, dtype)
    assert_matches(ck.attention(qkv, cu, max_len), attention_ref(qkv, cu, max_len), dtype)


def attention_float64(qkv: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.empty(qkv.shape[0], qkv.shape[2], qkv.shape[3], dtype=torch.float64)
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = qkv[start:end].double().unbind(1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


def test_attention_large_scores_and_custom_scale(isa):
    # Scores in the hundreds: fp32 rounding of the scores is amplified by exp, so judge the kernel by
    # the fp32 reference's own error against float64 (flash-attention's rule: at most ~2x, + atol).
    torch.manual_seed(1)
    qkv, cu, max_len = packed([50, 290], 2, 64, torch.float32, spread=6.0)
    exact = attention_float64(qkv, cu, 0.5)
    ref_error = (attention_ref(qkv, cu, max_len, 0.5).double() - exact).abs().max().item()
    kernel_error = (ck.attention(qkv, cu, max_len, 0.5).double() - exact).abs().max().item()
    assert kernel_error <= 2 * ref_error + 1e-5, (kernel_error, ref_error)


def test_attention_empty_sequences(isa):
    torch.manual_seed(2)
    qkv, cu, max_len = packed([0, 9, 0, 4], 2, 32, torch.float32)
    assert_matches(ck.attention(qkv, cu, max_len), attention_ref(qkv, cu, max_len), torch.float32)
    empty = torch.empty(0, 3, 2, 32)
    assert ck.attention(empty, torch.zeros(2, dtype=torch.int32), 0).shape == (0, 2, 32)


def test_attention_same_result_for_any_thread_count(isa):
    torch.manual_seed(3)
    qkv, cu, max_len = packed([70, 33, 1], 4, 64, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ck.attention(qkv, cu, max_len)
        torch.set_num_threads(max(2, threads))
        many = ck.attention(qkv, cu, max_len)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_amx_attention_tiling_in_software_emulation(tmp_path):
    """attention_amx.cpp's packing, tile indexing and online softmax, with software tiles.

    Runs everywhere g++ exists; the real AMX instructions only run where supported_isas() has "amx".
    """
    compiler = shutil.which("g++")
    source = Path(__file__).resolve().parents[1] / "csrc" / "cpu"
    if compiler is None or not (source / "amx_emulation_test.cpp").exists():
        pytest.skip("needs g++ and the csrc/cpu sources")
    binary = tmp_path / "amx_emulation_test"
    subprocess.run(
        [
            compiler,
            "-O2",
            "-std=c++17",
            "-fopenmp",
            "-DBERTRT_ISA_AMX",
            "-DBERTRT_AMX_EMULATE",
            f"-I{source.parent}",  # csrc/: common/dtype.h, as CMakeLists.txt sets it
            str(source / "amx_emulation_test.cpp"),
            str(source / "attention_amx.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- bias + GELU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (17, 1536), (5, 1001)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_ref(isa, dtype, approximate, shape, with_bias):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 4).to(dtype)
    bias = torch.randn(shape[1]).to(dtype) if with_bias else None
    assert_matches(ck.bias_gelu(x, bias, approximate), bias_gelu_ref(x, bias, approximate), dtype)


def test_bias_gelu_extremes(isa):
    x = torch.tensor([[-1e4, -40.0, -9.0, -3.0, -1e-6, 0.0, 1e-6, 3.0, 9.0, 40.0, 1e4]])
    for approximate in ("none", "tanh"):
        assert_matches(ck.bias_gelu(x, None, approximate), bias_gelu_ref(x, None, approximate), torch.float32)


def test_bias_gelu_float32_bias_with_bf16_input(isa):
    x = torch.randn(4, 40).bfloat16()
    bias = torch.randn(40)
    assert_matches(ck.bias_gelu(x, bias), bias_gelu_ref(x, bias), torch.bfloat16)


# ---- bias + residual + LayerNorm --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 384), (7, 768), (9, 100), (3, 13)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layer_norm_matches_ref(isa, dtype, shape, with_bias):
    torch.manual_seed(0)
    hidden = shape[1]
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    residual = torch.randn(shape).to(dtype)
    bias = torch.randn(hidden).to(dtype) if with_bias else None
    weight, beta = torch.randn(hidden).to(dtype), torch.randn(hidden).to(dtype)
    out = ck.bias_residual_layer_norm(x, bias, residual, weight, beta, 1e-5)
    assert_matches(out, bias_residual_layer_norm_ref(x, bias, residual, weight, beta, 1e-5), dtype)


def test_layer_norm_float32_params_with_bf16_activations(isa):
    torch.manual_seed(0)
    x, residual = torch.randn(5, 96).bfloat16(), torch.randn(5, 96).bfloat16()
    bias, weight, beta = torch.randn(96), torch.randn(96), torch.randn(96)
    out = ck.bias_residual_layer_norm(x, bias, residual, weight, beta)
    assert_matches(out, bias_residual_layer_norm_ref(x, bias, residual, weight, beta), torch.bfloat16)


def test_layer_norm_large_mean(isa):
    # The spread is tiny next to the mean: a one-pass E[x^2] - E[x]^2 would cancel catastrophically.
    torch.manual_seed(0)
    x = torch.randn(4, 768) * 1e-2 + 1e3
    args = (x, None, torch.zeros_like(x), torch.ones(768), torch.zeros(768), 1e-12)
    exact = torch.nn.functional.layer_norm(x.double(), (768,), eps=1e-12)
    ref_error = (bias_residual_layer_norm_ref(*args).double() - exact).abs().max().item()
    kernel_error = (ck.bias_residual_layer_norm(*args).double() - exact).abs().max().item()
    assert kernel_error <= 2 * ref_error + 1e-4, (kernel_error, ref_error)


# ---- embedding gather + LayerNorm -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens,hidden", [(1, 1), (1, 384), (33, 77), (130, 128)])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_embedding_layer_norm_matches_ref(isa, dtype, tokens, hidden, id_dtype):
    torch.manual_seed(0)
    word, position, token_type = (torch.randn(n, hidden).to(dtype) for n in (1000, 512, 2))
    weight, bias = torch.randn(hidden).to(dtype), torch.randn(hidden).to(dtype)
    ids = torch.randint(0, 1000, (tokens,), dtype=id_dtype)
    types = torch.randint(0, 2, (tokens,), dtype=id_dtype)
    positions = torch.arange(tokens, dtype=id_dtype) % 512
    args = (ids, types, positions, word, position, token_type, weight, bias)
    assert_matches(ck.embedding_layer_norm(*args), embedding_layer_norm_ref(*args), dtype)


def test_embedding_mixed_id_dtypes(isa):
    torch.manual_seed(0)
    word, position, token_type = torch.randn(50, 16), torch.randn(20, 16), torch.randn(2, 16)
    ids = torch.randint(0, 50, (9,), dtype=torch.int32)
    types = torch.zeros(9, dtype=torch.int64)
    positions = torch.arange(9, dtype=torch.int32)
    args = (ids, types, positions, word, position, token_type, torch.ones(16), torch.zeros(16))
    assert_matches(ck.embedding_layer_norm(*args), embedding_layer_norm_ref(*args), torch.float32)


# ---- int8 linear ------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (17, 33, 99), (64, 96, 384), (5, 130, 64)])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
def test_int8_linear_matches_ref(isa, m, n, k, activation):
    torch.manual_seed(0)
    x_q, x_scale = quantize_per_token(torch.randn(m, k))
    w_q, w_scale = quantize_per_token(torch.randn(n, k))
    bias = torch.randn(n)
    out = ck.int8_linear(x_q, x_scale, w_q, w_scale, bias, activation)
    torch.testing.assert_close(out, int8_linear_ref(x_q, x_scale, w_q, w_scale, bias, activation), atol=1e-5, rtol=1e-5)


def test_int8_linear_is_exact_over_the_whole_int8_range(isa):
    # -128 activations and weights, extreme products: the int32 sums must be exact.
    torch.manual_seed(0)
    m, n, k = 9, 40, 300
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    x_q[0] = -128
    x_q[1, ::2] = 127
    x_q[1, 1::2] = -128
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    w_q[0] = -128
    w_q[1] = 127
    ones_x, ones_w = torch.ones(m), torch.ones(n)
    out = ck.int8_linear(x_q, ones_x, w_q, ones_w)
    exact = x_q.double() @ w_q.double().t()
    assert torch.equal(out.double(), exact)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_int8_linear_output_dtypes(isa, out_dtype):
    torch.manual_seed(0)
    x_q, x_scale = quantize_per_token(torch.randn(6, 64))
    w_q, w_scale = quantize_per_token(torch.randn(24, 64))
    bias = torch.randn(24).to(out_dtype)
    out = ck.int8_linear(x_q, x_scale, w_q, w_scale, bias, "gelu", out_dtype)
    assert_matches(out, int8_linear_ref(x_q, x_scale, w_q, w_scale, bias, "gelu", out_dtype), out_dtype)


# ---- bad inputs -------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error_naming_the_problem():
    qkv, cu, max_len = packed([4, 3], 2, 32, torch.float32)
    with pytest.raises(ValueError, match="qkv must be float32, bfloat16 or float16, got torch.float64"):
        ck.attention(qkv.double(), cu, max_len)
    with pytest.raises(ValueError, match=r"qkv must be \(total_tokens, 3, heads, head_dim\), got \(7, 2, 2, 32\)"):
        ck.attention(qkv[:, :2].contiguous(), cu, max_len)
    with pytest.raises(ValueError, match="qkv must be contiguous, got shape"):
        ck.attention(qkv.transpose(2, 3), cu, max_len)
    with pytest.raises(ValueError, match=r"head_dim 136 is outside the cpu kernel's range \[1, 128\]"):
        ck.attention(torch.randn(7, 3, 1, 136), cu, max_len)
    with pytest.raises(ValueError, match="cu_seqlens must be int32, got torch.int64"):
        ck.attention(qkv, cu.long(), max_len)
    with pytest.raises(ValueError, match="cu_seqlens\\[-1\\] must equal total_tokens 7, got 6"):
        ck.attention(qkv, torch.tensor([0, 4, 6], dtype=torch.int32), max_len)
    with pytest.raises(ValueError, match="non-decreasing"):
        ck.attention(qkv, torch.tensor([0, 5, 4, 7], dtype=torch.int32), max_len)

    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="x must be float32, bfloat16 or float16, got torch.int32"):
        ck.bias_gelu(x.int(), None)
    with pytest.raises(ValueError, match=r"bias must be \(8,\), got \(7,\)"):
        ck.bias_gelu(x, torch.randn(7))
    with pytest.raises(ValueError, match="x must be contiguous"):
        ck.bias_gelu(torch.randn(8, 4).t(), None)
    with pytest.raises(ValueError, match="approximate must be one of"):
        ck.bias_gelu(x, None, "sigmoid")

    w = torch.ones(8)
    with pytest.raises(ValueError, match=r"residual must match x \(4, 8\), got \(4, 9\)"):
        ck.bias_residual_layer_norm(x, None, torch.randn(4, 9), w, w)
    with pytest.raises(ValueError, match="residual must have x's dtype torch.float32, got torch.bfloat16"):
        ck.bias_residual_layer_norm(x, None, x.bfloat16(), w, w)
    with pytest.raises(ValueError, match=r"weight must be \(8,\), got \(4,\)"):
        ck.bias_residual_layer_norm(x, None, x, torch.ones(4), w)

    word, position, token_type = torch.randn(10, 8), torch.randn(6, 8), torch.randn(2, 8)
    ids = torch.tensor([1, 2, 10])
    zeros = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids out of range: min 1, max 10, table has 10 rows"):
        ck.embedding_layer_norm(ids, zeros, zeros, word, position, token_type, w, w)
    with pytest.raises(ValueError, match="position_ids out of range: min -1"):
        ck.embedding_layer_norm(zeros, zeros, torch.tensor([0, -1, 2]), word, position, token_type, w, w)
    with pytest.raises(ValueError, match="input_ids must be int32 or int64, got torch.float32"):
        ck.embedding_layer_norm(zeros.float(), zeros, zeros, word, position, token_type, w, w)
    with pytest.raises(ValueError, match="position_embeddings must have word_embeddings' dtype"):
        ck.embedding_layer_norm(zeros, zeros, zeros, word, position.double(), token_type, w, w)

    x_q = torch.zeros(3, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="x_q and w_q must be int8, got torch.int8 and torch.float32"):
        ck.int8_linear(x_q, torch.ones(3), torch.zeros(4, 16), torch.ones(4))
    with pytest.raises(ValueError, match=r"must agree on K: \(3, 16\) vs \(4, 15\)"):
        ck.int8_linear(x_q, torch.ones(3), torch.zeros(4, 15, dtype=torch.int8), torch.ones(4))
    with pytest.raises(ValueError, match=r"w_scale must have shape \(4,\), got \(5,\)"):
        ck.int8_linear(x_q, torch.ones(3), torch.zeros(4, 16, dtype=torch.int8), torch.ones(5))
