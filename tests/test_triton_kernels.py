"""Triton kernels (bertrt.kernels) against the fp32 references in bertrt.ops, with awkward shapes.

Without a CUDA device the kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1, set here before
any kernel module is imported); with one, the same tests run the compiled kernels on the GPU. Shapes stay
tiny because the interpreter is slow.

Interpreter caveats (Triton 3.x), handled here and in the kernels:
* bf16 ``tl.dot`` is wrong under the interpreter (it multiplies the raw uint16 bit patterns), so the
  attention kernel upcasts bf16 dot operands to fp32 when interpreting (``kernels._utils.dot_upcast``);
  the native bf16 dot is therefore only exercised on a GPU.
* the interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest even); the kernels store
  through ``_utils.round_to``, which rounds to nearest even with integer arithmetic when interpreting.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test])")

from bertrt.kernels import _utils  # noqa: E402
from bertrt.kernels.attention import _attention_fwd_kernel, attention  # noqa: E402
from bertrt.kernels.bias_gelu import bias_gelu  # noqa: E402
from bertrt.kernels.bias_residual_layer_norm import bias_residual_layer_norm  # noqa: E402
from bertrt.kernels.embedding_layer_norm import embedding_layer_norm  # noqa: E402
from bertrt.ops import registry  # noqa: E402
from bertrt.ops.attention import attention_ref  # noqa: E402
from bertrt.ops.bias_gelu import bias_gelu_ref  # noqa: E402
from bertrt.ops.bias_residual_layer_norm import bias_residual_layer_norm_ref  # noqa: E402
from bertrt.ops.embedding_layer_norm import embedding_layer_norm_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA device and TRITON_INTERPRET is set to something other than 1", allow_module_level=True)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (atol, rtol) of the elementwise/LayerNorm kernels vs the reference, both rounded once to the dtype
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# attention also rounds the probabilities to fp16/bf16 before the P @ V dot (on a GPU)
ATTN_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (3e-2, 3e-2)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    atol, rtol = tol
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype=dtype, device=DEVICE)


def cu_seqlens(lengths) -> torch.Tensor:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=DEVICE)


# ---------------------------------------------------------------------------------------------- helpers


def test_bucket_rounds_up_to_powers_of_two():
    assert [_utils.bucket(n) for n in (0, 1, 16, 17, 31, 32, 33, 384, 512)] == [16, 16, 16, 32, 32, 32, 64, 512, 512]
    assert _utils.next_pow2(80) == 128 and _utils.next_pow2(1) == 1


def test_autotune_keys_are_rounded_shapes():
    # rounded shapes plus the option flags (each option set compiles and tunes its own kernel)
    assert _attention_fwd_kernel.keys == ["SEQ_BUCKET", "HEAD_DIM", "HAS_BIAS", "HAS_WINDOW", "HAS_ROTARY"]
    if _utils.interpreting():
        assert len(_attention_fwd_kernel.configs) == 1, "the interpreter must not autotune"


def test_registry_resolves_the_triton_kernels():
    registry._load.cache_clear()  # availability may have been cached before TRITON_INTERPRET was set
    assert registry.resolve("attention", "triton") is attention
    assert registry.resolve("bias_gelu", "triton") is bias_gelu
    assert registry.resolve("bias_residual_layer_norm", "triton") is bias_residual_layer_norm
    assert registry.resolve("embedding_layer_norm", "triton") is embedding_layer_norm
    assert registry.pick("attention", DEVICE, "triton") is attention


# -------------------------------------------------------------------------------------------- attention

MIXED_LENGTHS = (1, 7, 40, 0, 33)  # a single token, odd lengths, an empty sequence, one > BLOCK_N


@pytest.mark.parametrize("head_dim", [32, 64, 80, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_mixed_lengths(dtype, head_dim):
    heads = 2
    cu = cu_seqlens(MIXED_LENGTHS)
    qkv = randn(sum(MIXED_LENGTHS), 3, heads, head_dim, dtype=dtype, seed=head_dim)
    out = attention(qkv, cu, max(MIXED_LENGTHS))
    assert out.is_contiguous()
    assert_close(out, attention_ref(qkv, cu, max(MIXED_LENGTHS)), ATTN_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_single_token(dtype):
    cu = cu_seqlens([1])
    qkv = randn(1, 3, 3, 32, dtype=dtype, seed=1)
    out = attention(qkv, cu, 1)
    assert_close(out, attention_ref(qkv, cu, 1), ATTN_TOL[dtype])
    # one token attends only to itself: the output is its own value vector
    assert_close(out, qkv[:, 2], ATTN_TOL[dtype])


def test_attention_three_heads_odd_head_dim_and_custom_scale():
    lengths = (5, 17, 2)
    cu = cu_seqlens(lengths)
    qkv = randn(sum(lengths), 3, 3, 40, seed=2, scale=3.0)  # large logits: exercises the running max
    out = attention(qkv, cu, 17, scale=0.3)
    assert_close(out, attention_ref(qkv, cu, 17, scale=0.3), ATTN_TOL[torch.float32])


def test_attention_underestimated_max_seqlen_stays_correct():
    """max_seqlen only sizes the grid: too small costs speed, never correctness (no device sync to check)."""
    lengths = (3, 70, 9)
    cu = cu_seqlens(lengths)
    qkv = randn(sum(lengths), 3, 2, 32, dtype=torch.float16, seed=3)
    assert_close(attention(qkv, cu, 4), attention_ref(qkv, cu, 70), ATTN_TOL[torch.float16])
    # an overestimate (padding-sized grid) is also fine: extra programs exit without work
    assert_close(attention(qkv, cu, 200), attention_ref(qkv, cu, 70), ATTN_TOL[torch.float16])


def test_attention_strided_qkv_view():
    lengths = (6, 11)
    cu = cu_seqlens(lengths)
    big = randn(sum(lengths), 3, 2, 48, seed=4)
    qkv = big[..., :32]  # unit stride along head_dim, padded rows
    assert not qkv.is_contiguous()
    assert_close(attention(qkv, cu, 11), attention_ref(qkv, cu, 11), ATTN_TOL[torch.float32])


def test_attention_empty_batch():
    cu = cu_seqlens([0, 0])
    qkv = randn(0, 3, 2, 32)
    assert attention(qkv, cu, 0).shape == (0, 2, 32)


def test_attention_rejects_bad_inputs():
    cu = cu_seqlens([4])
    qkv = randn(4, 3, 2, 32)
    with pytest.raises(ValueError, match=r"\(4, 2, 32\)"):
        attention(qkv[:, 0], cu, 4)
    with pytest.raises(ValueError, match="int32"):
        attention(qkv, cu.long(), 4)
    with pytest.raises(ValueError, match="float64"):
        attention(qkv.double(), cu, 4)
    with pytest.raises(ValueError, match="head_dim"):
        attention(randn(4, 3, 1, 300), cu, 4)
    with pytest.raises(ValueError, match="contiguous"):
        attention(qkv.transpose(2, 3), cu, 4)
    with pytest.raises(ValueError, match="max_seqlen"):
        attention(qkv, cu, 0)


# -------------------------------------------------------------------------------------------- bias_gelu


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_gelu(dtype, approximate):
    x = randn(37, 100, dtype=dtype, seed=5, scale=3.0)
    bias = randn(100, dtype=dtype, seed=6)
    assert_close(bias_gelu(x, bias, approximate), bias_gelu_ref(x, bias, approximate), TOL[dtype])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_no_bias_single_token_and_extremes(approximate):
    x = torch.tensor([[-30.0, -5.0, -1e-3, 0.0, 1e-3, 0.5, 5.0, 30.0, 1e4, -1e4]], device=DEVICE)
    assert_close(bias_gelu(x, None, approximate), bias_gelu_ref(x, None, approximate), TOL[torch.float32])


def test_bias_gelu_strided_rows_and_mixed_bias_dtype():
    x = randn(9, 130, dtype=torch.float16, seed=7)[:, 3:103]
    bias = randn(100, seed=8)  # fp32 bias on fp16 activations: added in fp32, as in the reference
    out = bias_gelu(x, bias)
    assert out.dtype == torch.float16 and out.is_contiguous()
    assert_close(out, bias_gelu_ref(x, bias), TOL[torch.float16])


def test_bias_gelu_rejects_bad_inputs():
    x = randn(4, 8)
    with pytest.raises(ValueError, match="approximate"):
        bias_gelu(x, None, "sigmoid")
    with pytest.raises(ValueError, match=r"\(8,\)"):
        bias_gelu(x, randn(7), "none")
    with pytest.raises(ValueError, match="int32"):
        bias_gelu(x.int(), None)
    with pytest.raises(ValueError, match="contiguous"):
        bias_gelu(randn(8, 4).t(), None)
    with pytest.raises(ValueError, match=r"\(4, 8, 1\)"):
        bias_gelu(x[..., None], None)


# ----------------------------------------------------------------------------- bias_residual_layer_norm


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_residual_layer_norm(dtype, with_bias):
    x = randn(37, 100, dtype=dtype, seed=9)
    residual = randn(37, 100, dtype=dtype, seed=10, scale=4.0)
    bias = randn(100, dtype=dtype, seed=11) if with_bias else None
    weight, beta = randn(100, dtype=dtype, seed=12), randn(100, dtype=dtype, seed=13)
    out = bias_residual_layer_norm(x, bias, residual, weight, beta)
    assert_close(out, bias_residual_layer_norm_ref(x, bias, residual, weight, beta), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_residual_layer_norm_single_token_wide_row(dtype):
    x, residual = randn(1, 768, dtype=dtype, seed=14), randn(1, 768, dtype=dtype, seed=15)
    bias, weight, beta = (randn(768, seed=s) for s in (16, 17, 18))  # fp32 params on low-precision rows
    out = bias_residual_layer_norm(x, bias, residual, weight, beta, eps=1e-5)
    assert_close(out, bias_residual_layer_norm_ref(x, bias, residual, weight, beta, eps=1e-5), TOL[dtype])


def test_bias_residual_layer_norm_large_offset_and_hidden_one():
    """fp32 statistics: a large common offset must not destroy the variance (two-pass, in fp32)."""
    x = randn(5, 33, seed=19) + 1000.0
    residual = randn(5, 33, seed=20)
    weight, beta = randn(33, seed=21), randn(33, seed=22)
    out = bias_residual_layer_norm(x, None, residual, weight, beta, eps=1e-6)
    ref = bias_residual_layer_norm_ref(x, None, residual, weight, beta, eps=1e-6)
    assert_close(out, ref, (1e-4, 1e-4))
    one = randn(3, 1, seed=23)
    w1, b1 = randn(1, seed=24), randn(1, seed=25)
    assert_close(bias_residual_layer_norm(one, None, one, w1, b1),
                 bias_residual_layer_norm_ref(one, None, one, w1, b1), TOL[torch.float32])


def test_bias_residual_layer_norm_strided_rows():
    x = randn(6, 80, seed=26)[:, :64]
    residual = randn(6, 96, seed=27)[:, 32:]
    w, b = randn(64, seed=28), randn(64, seed=29)
    assert_close(bias_residual_layer_norm(x, None, residual, w, b),
                 bias_residual_layer_norm_ref(x, None, residual, w, b), TOL[torch.float32])


def test_bias_residual_layer_norm_rejects_bad_inputs():
    x, w = randn(4, 8), randn(8)
    with pytest.raises(ValueError, match=r"\(4, 7\)"):
        bias_residual_layer_norm(x, None, randn(4, 7), w, w)
    with pytest.raises(ValueError, match=r"\(9,\)"):
        bias_residual_layer_norm(x, randn(9), x, w, w)
    with pytest.raises(ValueError, match="float64"):
        bias_residual_layer_norm(x.double(), None, x, w, w)
    with pytest.raises(ValueError, match="16384"):
        big = randn(1, 16385)
        bias_residual_layer_norm(big, None, big, randn(16385), randn(16385))


# --------------------------------------------------------------------------------- embedding_layer_norm


def embedding_inputs(dtype, tokens=37, hidden=100, ids_dtype=torch.int64, seed=30):
    g = gen(seed)
    ids = (torch.randint(0, 50, (tokens,), generator=g).to(ids_dtype).to(DEVICE),
           torch.randint(0, 2, (tokens,), generator=g).to(ids_dtype).to(DEVICE),
           torch.randint(0, 40, (tokens,), generator=g).to(ids_dtype).to(DEVICE))
    tables = (randn(50, hidden, dtype=dtype, seed=seed + 1), randn(40, hidden, dtype=dtype, seed=seed + 2),
              randn(2, hidden, dtype=dtype, seed=seed + 3))
    ln = (randn(hidden, dtype=dtype, seed=seed + 4), randn(hidden, dtype=dtype, seed=seed + 5))
    return (*ids, *tables, *ln)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_layer_norm(dtype, ids_dtype):
    args = embedding_inputs(dtype, ids_dtype=ids_dtype)
    assert_close(embedding_layer_norm(*args), embedding_layer_norm_ref(*args), TOL[dtype])


def test_embedding_layer_norm_single_token_odd_hidden_and_eps():
    args = embedding_inputs(torch.float32, tokens=1, hidden=33, seed=40)
    assert_close(embedding_layer_norm(*args, eps=1e-5), embedding_layer_norm_ref(*args, eps=1e-5),
                 TOL[torch.float32])


def test_embedding_layer_norm_strided_table_and_mixed_id_dtypes():
    ids, types, pos, word, position, token_type, w, b = embedding_inputs(torch.float16, tokens=9, seed=50)
    word = torch.cat([word, word], dim=1)[:, 100:]  # row stride 200
    args = (ids.int(), types, pos.int(), word, position, token_type, w.float(), b.float())
    assert_close(embedding_layer_norm(*args), embedding_layer_norm_ref(*args), TOL[torch.float16])


def test_embedding_layer_norm_rejects_bad_inputs():
    ids, types, pos, word, position, token_type, w, b = embedding_inputs(torch.float32, tokens=5, seed=60)
    bad = ids.clone()
    bad[2] = 50
    with pytest.raises(ValueError, match="out of range"):
        embedding_layer_norm(bad, types, pos, word, position, token_type, w, b)
    with pytest.raises(ValueError, match="out of range"):
        embedding_layer_norm(ids, types, -pos - 1, word, position, token_type, w, b)
    with pytest.raises(ValueError, match="one shape"):
        embedding_layer_norm(ids, types[:4], pos, word, position, token_type, w, b)
    with pytest.raises(ValueError, match="hidden size"):
        embedding_layer_norm(ids, types, pos, word, position[:, :99], token_type, w, b)
    with pytest.raises(ValueError, match="float32"):
        embedding_layer_norm(ids.float(), types, pos, word, position, token_type, w, b)


# ------------------------------------------------------------------------------ GPU compilation, no GPU


@pytest.mark.slow
def test_kernels_compile_for_sm80_without_a_gpu():
    """The interpreter never runs Triton's GPU compiler; compile two representative kernels to sm_80 cubins
    with the ptxas bundled in the triton wheel (``python -m bertrt.kernels._compile_check`` does them all)."""
    import pathlib
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the tests above compiled and ran the kernels on it")
    ptxas = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip(f"this triton wheel has no NVIDIA backend ptxas at {ptxas}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    cases = "attention bf16 d=80,int8_linear out=bf16 act=1"
    done = subprocess.run([sys.executable, "-m", "bertrt.kernels._compile_check", "--arch", "80", "--kernel", cases],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok   sm_80") == 2, done.stdout
