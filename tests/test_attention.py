"""attention: every implementation vs attention_ref on packed variable-length batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bertrt.errors import InputError
from bertrt.ops import registry
from bertrt.ops.attention import attention

from .op_harness import assert_close, device_for, implementation_params, reference, run

# Implementation families that take only some dtypes (none today: every family runs fp32/bf16/fp16)
DTYPES: dict[str, tuple[torch.dtype, ...]] = {}


def skip_unsupported(impl: str, dtype: torch.dtype) -> None:
    family = impl.split(":", 1)[0]
    if dtype not in DTYPES.get(family, (dtype,)):
        pytest.skip(f"{family} kernels do not take {dtype}")


# (sequence lengths, heads, head_dim): a single token, mixed lengths with length 1, non-power-of-two
# head dims and odd head counts, lengths that straddle 16/32/64-wide tiles.
CASES = [
    ([1], 1, 32),
    ([7, 1, 13], 3, 80),
    ([33, 2, 17], 2, 64),
    ([5, 9], 4, 40),
    ([20], 2, 128),
]
LARGE = [([129, 70], 2, 64)]  # longer than a 128-wide tile


def make_inputs(lengths, heads, head_dim, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    qkv = torch.randn(total, 3, heads, head_dim, generator=generator).to(dtype).to(device)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return qkv, cu, max(lengths)


def check(impl, dtype, lengths, heads, head_dim):
    skip_unsupported(impl, dtype)
    device = device_for(impl)
    qkv, cu, max_len = make_inputs(lengths, heads, head_dim, dtype, device)
    exact = reference("attention", qkv, cu.cpu(), max_len, None)
    torch_out = registry.resolve("attention", "torch")(qkv.cpu(), cu.cpu(), max_len, None)
    out = run("attention", impl, qkv, cu, max_len, None)
    assert_close("attention", impl, out, exact, torch_out, dtype, inputs=(qkv, cu, max_len, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("lengths,heads,head_dim", CASES, ids=lambda c: str(c).replace(" ", ""))
@pytest.mark.parametrize("impl", implementation_params("attention"))
def test_attention_matches_reference(impl, dtype, lengths, heads, head_dim):
    check(impl, dtype, lengths, heads, head_dim)


@pytest.mark.parametrize("lengths,heads,head_dim", LARGE)
@pytest.mark.parametrize("impl", implementation_params("attention"))
def test_attention_long_sequences(impl, lengths, heads, head_dim):
    if impl == "triton" and not torch.cuda.is_available():
        pytest.skip("too slow for the Triton interpreter; the small cases cover its tiling logic")
    check(impl, torch.float32, lengths, heads, head_dim)


def test_attention_scale_argument():
    qkv, cu, max_len = make_inputs([6, 3], 2, 32, torch.float32, "cpu")
    ref = registry.resolve("attention", "ref")(qkv, cu, max_len, 0.5)
    torch.testing.assert_close(registry.resolve("attention", "torch")(qkv, cu, max_len, 0.5), ref,
                               atol=1e-5, rtol=1e-4)


def test_attention_sequences_do_not_mix():
    """Changing one sequence must leave every other sequence's output untouched."""
    qkv, cu, max_len = make_inputs([4, 6, 3], 2, 32, torch.float32, "cpu")
    base = registry.resolve("attention", "ref")(qkv, cu, max_len, None)
    changed = qkv.clone()
    changed[4:10] += 1.0
    out = registry.resolve("attention", "ref")(changed, cu, max_len, None)
    assert torch.equal(out[:4], base[:4]) and torch.equal(out[10:], base[10:])
    assert not torch.allclose(out[4:10], base[4:10])


def test_attention_rejects_bad_inputs():
    qkv, cu, max_len = make_inputs([4], 2, 32, torch.float32, "cpu")
    with pytest.raises(ValueError, match="qkv must be"):
        registry.resolve("attention", "ref")(qkv[:, :2], cu, max_len, None)
    with pytest.raises(ValueError, match="int32"):
        registry.resolve("attention", "ref")(qkv, cu.long(), max_len, None)


# ---- options: rel_bias (MPNet), window and rotary (ModernBERT) ------------------------------------------

# (sequence lengths, heads, head_dim, options, window): each option alone and combined, a single token,
# odd lengths, head_dim 24/40/64, heads 3/12, windows 0, 1, 5 and wider than every sequence.
OPTION_CASES = [
    ([1], 3, 24, ("rel_bias",), None),
    ([7, 1, 13], 3, 40, ("rel_bias",), None),
    ([7, 1, 13], 3, 24, ("rotary",), None),
    ([19, 4], 3, 64, ("window",), 0),
    ([19, 4], 3, 40, ("window",), 1),
    ([1, 23, 8], 3, 24, ("window",), 5),
    ([9, 12], 3, 24, ("window",), 100),
    ([21, 2], 3, 40, ("rotary", "window"), 5),
    ([17, 6], 3, 24, ("rel_bias", "window"), 3),
    ([25, 1, 10], 3, 40, ("rel_bias", "rotary", "window"), 4),
    ([11, 30], 12, 64, ("rel_bias",), None),  # MPNet-like: 12 heads of 64
    ([37, 5], 12, 64, ("rotary", "window"), 8),  # ModernBERT-like local layer (window = local_attention // 2)
    ([29], 12, 64, ("rotary",), None),  # ModernBERT-like global layer
    # one head, longer than Triton's 64-row query tile: later query tiles skip their first key tiles
    ([150, 3], 1, 24, ("rotary", "window"), 3),
    ([140], 1, 40, ("rel_bias", "window"), 20),
]
# longer than the kernels' key blocks (256 on CPU): several key tiles skipped per query block, rows split
LONG_OPTION_CASES = [
    ([300, 70], 2, 64, ("rotary", "window"), 16),
    ([290, 3], 2, 40, ("rel_bias", "window"), 40),
    ([280], 2, 24, ("rel_bias", "rotary"), None),
]


def case_id(case) -> str:
    lengths, heads, head_dim, names, window = case
    opts = "+".join(n if n != "window" else f"window{window}" for n in names)
    return f"{lengths}-h{heads}-d{head_dim}-{opts}".replace(" ", "")


def make_options(names, heads, head_dim, max_len, window, device, seed=1):
    """Options for attention: rel_bias of O(1) scores, transformers-style rotary tables with a few spare
    positions (P > max_seqlen is allowed), the window."""
    generator = torch.Generator().manual_seed(seed)
    options = {}
    if "rel_bias" in names:
        options["rel_bias"] = torch.randn(heads, 2 * max_len - 1, generator=generator).to(device)
    if "rotary" in names:
        inverse = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len + 3, dtype=torch.float32), inverse)
        options["rotary"] = (angles.cos().to(device), angles.sin().to(device))
    if "window" in names:
        options["window"] = window
    return options


def check_options(impl, dtype, lengths, heads, head_dim, names, window):
    skip_unsupported(impl, dtype)
    device = device_for(impl)
    qkv, cu, max_len = make_inputs(lengths, heads, head_dim, dtype, device)
    options = make_options(names, heads, head_dim, max_len, window, device)
    cpu_options = make_options(names, heads, head_dim, max_len, window, "cpu")
    exact = reference("attention", qkv, cu, max_len, None, **cpu_options)
    torch_out = registry.resolve("attention", "torch")(qkv.cpu(), cu.cpu(), max_len, None, **cpu_options)
    out = run("attention", impl, qkv, cu, max_len, None, **options)
    assert_close("attention", impl, out, exact, torch_out, dtype, inputs=(qkv, cu, max_len, None),
                 options=cpu_options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths,heads,head_dim,names,window", OPTION_CASES, ids=[case_id(c) for c in OPTION_CASES])
@pytest.mark.parametrize("impl", implementation_params("attention"))
def test_attention_options_match_reference(impl, dtype, lengths, heads, head_dim, names, window):
    check_options(impl, dtype, lengths, heads, head_dim, names, window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths,heads,head_dim,names,window", LONG_OPTION_CASES,
                         ids=[case_id(c) for c in LONG_OPTION_CASES])
@pytest.mark.parametrize("impl", implementation_params("attention"))
def test_attention_options_long_sequences(impl, dtype, lengths, heads, head_dim, names, window):
    if impl == "triton" and not torch.cuda.is_available():
        pytest.skip("too slow for the Triton interpreter; the small cases cover its window and option logic")
    check_options(impl, dtype, lengths, heads, head_dim, names, window)


def test_attention_rotary_follows_transformers_rotate_half():
    """attention_ref's rotary is transformers' convention: x * cos + rotate_half(x) * sin with cos/sin
    repeated over both halves and rotate_half(x) = cat(-x2, x1). (Written out here: importing the llama or
    ModernBERT modeling files pulls in transformers' hub-kernels integration, which trips over this repo's
    top-level ``kernels`` package on sys.path.)"""
    qkv, cu, max_len = make_inputs([9], 2, 24, torch.float32, "cpu")
    cos, sin = make_options(("rotary",), 2, 24, max_len, None, "cpu")["rotary"]
    full_cos = torch.cat([cos[:9], cos[:9]], -1)[None, None]
    full_sin = torch.cat([sin[:9], sin[:9]], -1)[None, None]

    def rotate_half(x):
        return torch.cat((-x[..., 12:], x[..., :12]), dim=-1)

    q, k, v = (qkv[:, i].transpose(0, 1)[None] for i in range(3))  # (1, heads, len, head_dim)
    q, k = q * full_cos + rotate_half(q) * full_sin, k * full_cos + rotate_half(k) * full_sin
    expected = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1)
    out = registry.resolve("attention", "ref")(qkv, cu, max_len, rotary=(cos, sin))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_rel_bias_and_window_semantics():
    """Score(h, i, j) += rel_bias[h, j - i + max_seqlen - 1] and |i - j| <= window, written out by hand for
    one sequence in a batch whose max_seqlen is larger than its length."""
    qkv, cu, _ = make_inputs([6], 2, 8, torch.float32, "cpu")
    max_len = 10  # the table is built for a longer batch: indices are offset by max_seqlen - 1
    bias = torch.randn(2, 2 * max_len - 1, generator=torch.Generator().manual_seed(3))
    q, k, v = qkv.unbind(1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / 8 ** 0.5
    for i in range(6):
        for j in range(6):
            scores[:, i, j] += bias[:, j - i + max_len - 1]
            if abs(i - j) > 2:
                scores[:, i, j] = -torch.inf
    expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    for impl in ("ref", "torch", "cpu"):
        if impl == "cpu" and registry.availability("attention")["cpu"] is not None:
            continue
        out = registry.resolve("attention", impl)(qkv, cu, max_len, rel_bias=bias, window=2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=lambda m, impl=impl: f"{impl}: {m}")


def test_attention_dispatcher_passes_options():
    qkv, cu, max_len = make_inputs([5, 8], 3, 24, torch.float32, "cpu")
    options = make_options(("rel_bias", "rotary", "window"), 3, 24, max_len, 2, "cpu")
    expected = registry.resolve("attention", "ref")(qkv, cu, max_len, **options)
    for impl in ("auto", "torch"):
        torch.testing.assert_close(attention(qkv, cu, max_len, impl=impl, **options), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(attention(qkv, cu, max_len), expected, atol=1e-3)


def test_attention_window_wider_than_sequence_is_global():
    qkv, cu, max_len = make_inputs([7, 12], 3, 40, torch.float32, "cpu")
    for impl in ("ref", "torch"):
        fn = registry.resolve("attention", impl)
        torch.testing.assert_close(fn(qkv, cu, max_len, window=11), fn(qkv, cu, max_len), atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(registry.availability("attention")["cpu"] is not None, reason="no cpu kernels built")
def test_attention_cpu_window_same_result_for_any_thread_count():
    """The window's key tiles are aligned to absolute positions, so the work split cannot change results."""
    from bertrt.ops import cpu_kernels

    qkv, cu, max_len = make_inputs([300, 41, 1], 4, 64, torch.float32, "cpu", seed=5)
    options = make_options(("rel_bias", "rotary", "window"), 4, 64, max_len, 19, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu_kernels.attention(qkv, cu, max_len, **options)
        torch.set_num_threads(max(2, threads))
        many = cpu_kernels.attention(qkv, cu, max_len, **options)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("impl", ["ref", "torch", "cpu"])
def test_attention_rejects_bad_options(impl):
    if impl == "cpu" and registry.availability("attention")["cpu"] is not None:
        pytest.skip("no cpu kernels built")
    fn = registry.resolve("attention", impl)
    qkv, cu, max_len = make_inputs([4, 6], 2, 24, torch.float32, "cpu")
    cos, sin = make_options(("rotary",), 2, 24, max_len, None, "cpu")["rotary"]
    bad = [
        ({"rel_bias": torch.zeros(2, 2 * max_len)}, r"rel_bias must be \(heads, 2 \* max_seqlen - 1\)"),
        ({"rel_bias": torch.zeros(3, 2 * max_len - 1)}, r"rel_bias must be \(heads"),
        ({"rel_bias": torch.zeros(2, 2 * max_len - 1, dtype=torch.float16)}, "rel_bias must be float32"),
        ({"window": -1}, "window must be None or an int >= 0"),
        ({"window": 2.5}, "window must be None or an int >= 0"),
        ({"window": True}, "window must be None or an int >= 0"),
        ({"rotary": cos}, r"rotary must be None or a pair \(cos, sin\)"),
        ({"rotary": (cos[:, :5], sin)}, r"rotary cos must be \(positions, head_dim // 2 = 12\)"),
        ({"rotary": (cos, sin[: max_len - 1])}, "rotary sin has 5 positions, fewer than max_seqlen 6"),
        ({"rotary": (cos, sin.double())}, "rotary sin must be float32"),
    ]
    for options, message in bad:
        with pytest.raises(InputError, match=message):
            fn(qkv, cu, max_len, **options)
    odd = torch.randn(10, 3, 2, 25)
    with pytest.raises(InputError, match="rotary needs an even head_dim, got 25"):
        fn(odd, cu, max_len, rotary=(cos[:, :12], sin[:, :12]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CUDA kernels' options are "
                    "unverified on a GPU until this runs)")
@pytest.mark.parametrize("path", ["mma", "simt"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_attention_cuda_paths_with_options(path, dtype):
    """Both CUDA kernels (tensor-core mma and fp32 SIMT) with every option, against attention_ref."""
    from bertrt.ops import cuda_kernels

    if path == "mma" and cuda_kernels._cuda.attention_path(cuda_kernels._FLOAT_DTYPES[dtype],
                                                           cuda_kernels._cuda.current_device_sm()) != "mma":
        pytest.skip(f"no tensor-core path for {dtype} on this GPU")
    for lengths, heads, head_dim, names, window in OPTION_CASES + LONG_OPTION_CASES:
        qkv, cu, max_len = make_inputs(lengths, heads, head_dim, dtype, "cuda")
        options = make_options(names, heads, head_dim, max_len, window, "cuda")
        cpu_options = make_options(names, heads, head_dim, max_len, window, "cpu")
        exact = reference("attention", qkv, cu, max_len, None, **cpu_options)
        torch_out = registry.resolve("attention", "torch")(qkv.cpu(), cu.cpu(), max_len, None, **cpu_options)
        out = cuda_kernels.attention_with_path(qkv, cu, max_len, None, path, **options)
        assert_close("attention", f"cuda-{path}", out, exact, torch_out, dtype, inputs=(qkv, cu, max_len, None),
                     options=cpu_options)
