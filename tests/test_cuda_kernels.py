"""The CUDA C++ kernels (bertrt._cuda via bertrt.ops.cuda_kernels) against the ``<op>_ref`` ground truth.

GPU comparisons run on awkward shapes in float32 / float16 / bfloat16 and skip, with the reason, when
torch sees no CUDA device. The argument checks of the glue and of the binding need no GPU (only the
built module) and run wherever bertrt._cuda imports.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from bertrt.ops import attention_ref, bias_gelu_ref, bias_residual_layer_norm_ref, embedding_layer_norm_ref

HAS_GPU = torch.cuda.is_available()
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)

try:
    from bertrt import _cuda
    from bertrt.ops import cuda_kernels as ck

    IMPORT_ERROR = None
except ImportError as exc:  # not built
    _cuda = ck = None
    IMPORT_ERROR = exc


@pytest.fixture(scope="module")
def built():
    if IMPORT_ERROR is not None:
        if NVCC is None:
            pytest.skip(f"bertrt._cuda is not built (no nvcc on this machine): {IMPORT_ERROR}")
        pytest.fail(f"nvcc exists but bertrt._cuda / bertrt.ops.cuda_kernels do not import: {IMPORT_ERROR}")
    return ck


needs_gpu = pytest.mark.skipif(
    not HAS_GPU,
    reason="no CUDA device (torch.cuda.is_available() is False): kernel numerics are only checked on a GPU; "
    "tests/test_cuda_build.py checks the build statically",
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) per dtype: the kernels compute in fp32 and round once, so the error is the output rounding.
TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# tensor-core attention also rounds the softmax probabilities to the input dtype
ATTENTION_TOL = {torch.float32: (5e-5, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3e-2, 3e-2)}


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float]) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.isfinite(actual.float()).all(), "non-finite output"
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol[0], rtol=tol[1])


def _randn(*shape: int, dtype: torch.dtype, offset: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A contiguous CUDA tensor; with offset > 0 its data starts `offset` elements into a larger buffer, so
    that it is not 16-byte aligned and the kernels must take their scalar paths."""
    n = 1
    for s in shape:
        n *= s
    buf = torch.randn(n + offset, device="cuda", dtype=torch.float32).mul_(scale).to(dtype)
    return buf[offset:].view(*shape)


def _fill(t: torch.Tensor, dtype: torch.dtype, offset: int) -> torch.Tensor:
    out = _randn(*t.shape, dtype=dtype, offset=offset)
    out.copy_(t)
    return out


# --- argument checks (no GPU needed) --------------------------------------------------------------


def test_glue_rejects_cpu_tensors(built):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        built.bias_gelu(x, None)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        built.bias_residual_layer_norm(x, None, x, torch.ones(8), torch.zeros(8))
    qkv = torch.randn(5, 3, 2, 16)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        built.attention(qkv, torch.tensor([0, 5], dtype=torch.int32), 5)
    ids = torch.zeros(3, dtype=torch.int64)
    table = torch.randn(10, 8)
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        built.embedding_layer_norm(ids, ids, ids, table, table, table, torch.ones(8), torch.zeros(8))


def test_glue_keeps_the_reference_shape_checks(built):
    with pytest.raises(ValueError, match="bias must be"):
        built.bias_gelu(torch.randn(4, 8), torch.randn(7))
    with pytest.raises(ValueError, match="approximate"):
        built.bias_gelu(torch.randn(4, 8), None, approximate="sigmoid")
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        built.attention(torch.randn(5, 3, 2, 16), torch.tensor([0, 5]), 5)


def test_binding_validates_arguments(built):
    with pytest.raises(ValueError, match="dtype must be"):
        _cuda.bias_gelu(16, 0, 16, 4, 4, "none", "float64")
    with pytest.raises(ValueError, match="null pointer"):
        _cuda.bias_residual_layer_norm(0, 0, 0, 16, 16, 16, 4, 4, 1e-12, "float32")  # x is required
    with pytest.raises(ValueError, match="head_dim must be in"):
        _cuda.attention(16, 16, 16, 1, 1, 200, 8, 0.1, "float16")
    with pytest.raises(ValueError, match="path must be"):
        _cuda.attention(16, 16, 16, 1, 1, 64, 8, 0.1, "float16", 0, "fast")
    with pytest.raises(ValueError, match="int32' or 'int64"):
        _cuda.embedding_layer_norm(16, "int16", 16, "int32", 16, "int32", 16, 10, 16, 10, 16, 2, 16, 16, 16, 3, 8,
                                   1e-12, "float32")
    assert _cuda.attention_path("bfloat16", 75) == "simt"
    assert _cuda.attention_path("bfloat16", 80) == "mma"
    assert _cuda.attention_path("float16", 75) == "mma"
    assert _cuda.attention_path("float32", 90) == "simt"


# --- attention ------------------------------------------------------------------------------------

LENGTHS = [1, 17, 64, 65, 0, 130, 3, 512]  # one empty sequence, tile edges, BERT's maximum
HEAD_DIMS = [1, 8, 32, 36, 40, 64, 80, 96, 128]


def _qkv(lengths, heads, head_dim, dtype, offset=0):
    total = sum(lengths)
    qkv = _randn(total, 3, heads, head_dim, dtype=dtype, offset=offset)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    return qkv, cu


def _paths(dtype):
    sm = _cuda.current_device_sm()
    paths = ["auto", "simt"]
    if dtype == torch.float16 or (dtype == torch.bfloat16 and sm >= 80):
        paths.append("mma")
    return paths


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_matches_reference(built, dtype, head_dim):
    torch.manual_seed(head_dim)
    qkv, cu = _qkv(LENGTHS, 3, head_dim, dtype)
    expected = attention_ref(qkv, cu, max(LENGTHS))
    for path in _paths(dtype):
        actual = built.attention_with_path(qkv, cu, max(LENGTHS), path=path)
        _close(actual, expected, ATTENTION_TOL[dtype])
    _close(built.attention(qkv, cu, max(LENGTHS)), expected, ATTENTION_TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", [40, 64])
def test_attention_unaligned_input_and_custom_scale(built, dtype, head_dim):
    torch.manual_seed(1)
    qkv, cu = _qkv([5, 70, 33], 2, head_dim, dtype, offset=1)  # not 16-byte aligned: scalar loads
    assert qkv.data_ptr() % 16 != 0
    expected = attention_ref(qkv, cu, 70, scale=0.3)
    for path in _paths(dtype):
        _close(built.attention_with_path(qkv, cu, 70, scale=0.3, path=path), expected, ATTENTION_TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_attention_max_seqlen_only_sizes_the_grid(built, dtype):
    """A too small max_seqlen still gives the full result (CTAs loop over the query tiles)."""
    qkv, cu = _qkv([300, 7], 4, 64, dtype)
    expected = attention_ref(qkv, cu, 300)
    _close(built.attention(qkv, cu, 1), expected, ATTENTION_TOL[dtype])


@needs_gpu
def test_attention_bert_base_batch(built):
    torch.manual_seed(0)
    lengths = [512, 384, 128, 1, 255, 256, 77, 500]
    qkv, cu = _qkv(lengths, 12, 64, torch.float16)
    _close(built.attention(qkv, cu, 512), attention_ref(qkv, cu, 512), ATTENTION_TOL[torch.float16])


@needs_gpu
def test_attention_large_scores_stay_finite(built):
    """Peaked softmax (scores of a few hundred) exercises the running max of the online softmax."""
    torch.manual_seed(2)
    qkv, cu = _qkv([200, 31], 2, 64, torch.float32)
    qkv = (qkv * 6).contiguous()
    expected = attention_ref(qkv, cu, 200)
    for dtype in DTYPES:
        q = qkv.to(dtype)
        _close(built.attention(q, cu, 200), attention_ref(q, cu, 200), ATTENTION_TOL[dtype])
    _close(built.attention(qkv, cu, 200), expected, ATTENTION_TOL[torch.float32])


@needs_gpu
def test_attention_rejects_unsupported_path(built):
    if _cuda.current_device_sm() >= 80:
        with pytest.raises(ValueError, match="path must be"):
            built.attention_with_path(*_qkv([4], 1, 32, torch.float16), 4, path="fastest")
    else:
        with pytest.raises(ValueError, match="bf16 mma needs sm_80"):
            built.attention_with_path(*_qkv([4], 1, 32, torch.bfloat16), 4, path="mma")
    with pytest.raises(ValueError, match=r"head_dim 160 is outside the cuda kernel's range \[1, 128\]"):
        built.attention(*_qkv([4], 1, 160, torch.float16), 4)


# --- bias_gelu ------------------------------------------------------------------------------------

GELU_SHAPES = [(1, 1), (7, 3), (33, 768), (5, 1000), (64, 3072), (3, 8), (2, 4)]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GELU_SHAPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_reference(built, dtype, shape, approximate, with_bias):
    torch.manual_seed(shape[1])
    x = _randn(*shape, dtype=dtype, scale=3.0)
    bias = _randn(shape[1], dtype=dtype) if with_bias else None
    _close(built.bias_gelu(x, bias, approximate), bias_gelu_ref(x, bias, approximate), TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_gelu_unaligned(built, dtype):
    x = _randn(9, 64, dtype=dtype, offset=1)
    bias = _randn(64, dtype=dtype, offset=3)
    _close(built.bias_gelu(x, bias), bias_gelu_ref(x, bias), TOL[dtype])


@needs_gpu
def test_bias_gelu_empty(built):
    x = torch.empty(0, 16, device="cuda")
    assert built.bias_gelu(x, None).shape == (0, 16)


# --- bias_residual_layer_norm ---------------------------------------------------------------------

HIDDENS = [1, 3, 8, 384, 768, 1000, 1024, 4099, 10000, 40000]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layer_norm_matches_reference(built, dtype, hidden, with_bias):
    torch.manual_seed(hidden)
    tokens = 37
    x = _randn(tokens, hidden, dtype=dtype)
    residual = _randn(tokens, hidden, dtype=dtype, scale=2.0)
    bias = _randn(hidden, dtype=dtype) if with_bias else None
    weight = _randn(hidden, dtype=dtype)
    beta = _randn(hidden, dtype=dtype)
    for eps in (1e-12, 1e-5):
        _close(built.bias_residual_layer_norm(x, bias, residual, weight, beta, eps),
               bias_residual_layer_norm_ref(x, bias, residual, weight, beta, eps), TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_residual_layer_norm_unaligned_and_offset_mean(built, dtype):
    x = _randn(11, 768, dtype=dtype, offset=1) + 100  # a large mean: the two-pass variance must hold
    residual = _randn(11, 768, dtype=dtype, offset=2)
    x = _fill(x, dtype, 1)
    weight, beta, bias = (_randn(768, dtype=dtype, offset=5) for _ in range(3))
    _close(built.bias_residual_layer_norm(x, bias, residual, weight, beta),
           bias_residual_layer_norm_ref(x, bias, residual, weight, beta), TOL[dtype])


@needs_gpu
def test_bias_residual_layer_norm_rejects_mixed_dtypes(built):
    x = _randn(4, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="expected torch.float16"):
        built.bias_residual_layer_norm(x, None, x, torch.ones(8, device="cuda"), torch.zeros(8, device="cuda"))
    with pytest.raises(ValueError, match="contiguous"):
        y = _randn(8, 4, dtype=torch.float16).t()
        built.bias_residual_layer_norm(y, None, y, torch.ones(8, device="cuda", dtype=torch.float16),
                                       torch.zeros(8, device="cuda", dtype=torch.float16))


# --- embedding_layer_norm -------------------------------------------------------------------------


def _embedding_inputs(tokens, hidden, dtype, id_dtypes, offset=0):
    vocab, positions, types = 1000, 512, 2
    gen = torch.Generator(device="cuda").manual_seed(hidden)
    ids = torch.randint(0, vocab, (tokens,), device="cuda", generator=gen).to(id_dtypes[0])
    type_ids = torch.randint(0, types, (tokens,), device="cuda", generator=gen).to(id_dtypes[1])
    pos_ids = torch.randint(0, positions, (tokens,), device="cuda", generator=gen).to(id_dtypes[2])
    word = _randn(vocab, hidden, dtype=dtype, offset=offset)
    pos = _randn(positions, hidden, dtype=dtype, offset=offset)
    typ = _randn(types, hidden, dtype=dtype, offset=offset)
    weight = _randn(hidden, dtype=dtype, offset=offset)
    bias = _randn(hidden, dtype=dtype, offset=offset)
    return ids, type_ids, pos_ids, word, pos, typ, weight, bias


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [8, 130, 384, 768, 1001, 5000])
@pytest.mark.parametrize(
    "id_dtypes", [(torch.int64,) * 3, (torch.int32, torch.int64, torch.int32)], ids=["i64", "mixed"]
)
def test_embedding_layer_norm_matches_reference(built, dtype, hidden, id_dtypes):
    args = _embedding_inputs(45, hidden, dtype, id_dtypes)
    _close(built.embedding_layer_norm(*args), embedding_layer_norm_ref(*args), TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_embedding_layer_norm_unaligned(built, dtype):
    args = _embedding_inputs(20, 384, dtype, (torch.int32,) * 3, offset=1)
    _close(built.embedding_layer_norm(*args, eps=1e-5), embedding_layer_norm_ref(*args, eps=1e-5), TOL[dtype])


@needs_gpu
def test_embedding_layer_norm_rejects_out_of_range_ids(built):
    ids, type_ids, pos_ids, *tables = _embedding_inputs(10, 64, torch.float32, (torch.int64,) * 3)
    bad = ids.clone()
    bad[3] = 1000
    with pytest.raises(ValueError, match="out of range"):
        built.embedding_layer_norm(bad, type_ids, pos_ids, *tables)
    bad = type_ids.clone()
    bad[0] = -1
    with pytest.raises(ValueError, match="out of range"):
        built.embedding_layer_norm(ids, bad, pos_ids, *tables)


@needs_gpu
def test_kernels_run_on_a_side_stream(built):
    """The glue launches on torch's current stream: results are right once that stream is synchronized."""
    x = _randn(64, 768, dtype=torch.float16)
    bias = _randn(768, dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = built.bias_gelu(x, bias)
    stream.synchronize()
    _close(out, bias_gelu_ref(x, bias), TOL[torch.float16])
