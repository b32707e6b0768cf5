"""embedding_layer_norm: every implementation vs the reference (gather of three tables + LayerNorm), and
with the tables some families lack (DistilBERT: no token types; ModernBERT: neither, no LayerNorm beta)."""

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


CASES = [(1, 48), (17, 80), (40, 384)]  # (tokens, hidden)


def make_inputs(tokens, hidden, dtype, id_dtype, seed=3):
    generator = torch.Generator().manual_seed(seed)
    vocab, positions, types = 101, 64, 2
    ids = torch.randint(0, vocab, (tokens,), generator=generator).to(id_dtype)
    type_ids = torch.randint(0, types, (tokens,), generator=generator).to(id_dtype)
    position_ids = torch.randint(0, positions, (tokens,), generator=generator).to(id_dtype)
    tables = [torch.randn(n, hidden, generator=generator).to(dtype) for n in (vocab, positions, types)]
    weight = (1 + 0.1 * torch.randn(hidden, generator=generator)).to(dtype)
    bias = (0.1 * torch.randn(hidden, generator=generator)).to(dtype)
    return [ids, type_ids, position_ids, *tables, weight, bias]


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("tokens,hidden", CASES)
@pytest.mark.parametrize("impl", implementation_params("embedding_layer_norm"))
def test_embedding_layer_norm_matches_reference(impl, tokens, hidden, dtype, id_dtype):
    skip_unsupported(impl, dtype)
    args = make_inputs(tokens, hidden, dtype, id_dtype)
    exact = reference("embedding_layer_norm", *args, 1e-12)
    torch_out = registry.resolve("embedding_layer_norm", "torch")(*args, 1e-12)
    device = device_for(impl)
    out = run("embedding_layer_norm", impl, *[a.to(device) for a in args], 1e-12)
    assert_close("embedding_layer_norm", impl, out, exact, torch_out, dtype, inputs=(*args, 1e-12))


MISSING = {"notypes": ("token_type",), "nopositions": ("position",), "wordonly": ("position", "token_type")}


@pytest.mark.parametrize("with_beta", [True, False], ids=["beta", "nobeta"])
@pytest.mark.parametrize("missing", MISSING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("tokens,hidden", [(1, 24), (129, 100), (3, 768)])
@pytest.mark.parametrize("impl", implementation_params("embedding_layer_norm"))
def test_embedding_layer_norm_without_tables_matches_reference(impl, tokens, hidden, dtype, missing, with_beta):
    skip_unsupported(impl, dtype)
    args = make_inputs(tokens, hidden, dtype, torch.int64, seed=9)
    if not with_beta:
        args[7] = None
    gone = MISSING[missing]
    if "token_type" in gone:
        args[1], args[5] = None, None  # ids of a missing table may be None ...
    if "position" in gone:
        args[4] = None
        args[2] = torch.full((tokens,), 10**6)  # ... or anything: they are ignored, never read
    exact = reference("embedding_layer_norm", *args, 1e-12)
    torch_out = registry.resolve("embedding_layer_norm", "torch")(*args, 1e-12)
    device = device_for(impl)
    out = run("embedding_layer_norm", impl, *[None if a is None else a.to(device) for a in args], 1e-12)
    assert_close("embedding_layer_norm", impl, out, exact, torch_out, dtype, inputs=(*args, 1e-12))


def test_embedding_layer_norm_needs_the_ids_of_a_table_it_has():
    args = make_inputs(5, 48, torch.float32, torch.int64)
    args[1] = None  # token_type_embeddings given, token_type_ids not
    with pytest.raises(ValueError, match="token_type_ids must be a tensor"):
        registry.resolve("embedding_layer_norm", "ref")(*args, 1e-12)


@pytest.mark.parametrize("impl", implementation_params("embedding_layer_norm"))
def test_embedding_layer_norm_rejects_out_of_range_ids(impl):
    args = make_inputs(5, 48, torch.float32, torch.int64)
    args[0][2] = 101  # one past the vocabulary
    device = device_for(impl)
    with pytest.raises(ValueError, match="input_ids out of range"):
        run("embedding_layer_norm", impl, *[a.to(device) for a in args], 1e-12)
