"""attention: every implementation vs attention_ref on packed variable-length batches."""

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
