"""The whole tiny encoder with every op in Triton (interpreted on CPU here) against the reference ops."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bertrt.model import load_checkpoint
from bertrt.ops import registry
from bertrt.ops.plan import plan_for


@pytest.mark.parametrize("task", ["embed", "ner"])
def test_tiny_encoder_with_triton_kernels_matches_reference(tiny_model_dirs, task):
    for op in ("attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm"):
        reason = registry.availability(op)["triton"]
        if reason:
            pytest.skip(f"triton {op}: {reason}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(tiny_model_dirs[task], device=device).model
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 1, 12]
    ids = torch.randint(1000, 30000, (sum(lengths),), generator=generator).to(device)
    cu = torch.tensor([0, 5, 6, 18], dtype=torch.int32, device=device)
    outputs = {}
    for impl in ("ref", "triton"):
        # defer the biases under triton to exercise the fused bias epilogues too
        model.encoder.plan = dataclasses.replace(plan_for(device, "float32", impl), defer_bias=impl == "triton")
        with torch.no_grad():
            outputs[impl] = model.forward_packed(ids, cu, max(lengths)).float().cpu()
    torch.testing.assert_close(outputs["triton"], outputs["ref"], atol=1e-4, rtol=1e-4)
