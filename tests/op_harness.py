"""One harness for every op: walks each implementation this machine has, runs it on the same
input as ``<op>_ref`` and says which it skipped and why (ggml's test-backend-ops idea).

An implementation id is "torch", "cpu:<isa>" (one per compiled C++ ISA variant), "triton" or "cuda".
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from bertrt.ops import registry

from .conftest import FP32_TOLERANCE, LOW_PRECISION_ATOL, LOW_PRECISION_FACTOR


def implementation_params(op: str) -> list:
    reasons = registry.availability(op)
    params = [pytest.param("torch", id="torch")]
    if reasons["cpu"] is None:
        from bertrt.ops import cpu_kernels

        supported = set(cpu_kernels.supported_isas())
        for isa in cpu_kernels.isa_variants():
            marks = () if isa in supported else pytest.mark.skip(reason=f"this CPU cannot run the {isa} variant")
            params.append(pytest.param(f"cpu:{isa}", id=f"cpu-{isa}", marks=marks))
    else:
        params.append(pytest.param("cpu", id="cpu", marks=pytest.mark.skip(reason=reasons["cpu"])))
    for impl in ("triton", "cuda"):
        marks = pytest.mark.skip(reason=reasons[impl]) if reasons[impl] else ()
        params.append(pytest.param(impl, id=impl, marks=marks))
    return params


def device_for(impl: str) -> torch.device:
    """Triton and CUDA run on the GPU when there is one; Triton otherwise runs interpreted on CPU."""
    if impl in ("cuda", "triton") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def run(op: str, impl: str, *args, **options):
    """Call ``op`` with implementation ``impl`` on args (and keyword options) already placed on
    device_for(impl)."""
    if impl.startswith("cpu:"):
        from bertrt.ops import cpu_kernels

        context = cpu_kernels.use_isa(impl.split(":", 1)[1])
        impl = "cpu"
    else:
        context = contextlib.nullcontext()
    with context:
        return registry.resolve(op, impl)(*args, **options)


def _cast(value, dtype: torch.dtype):
    """value on the CPU with its floating tensors (also inside tuples, e.g. rotary's (cos, sin)) in dtype."""
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, torch.Tensor):
        return value.cpu().to(dtype) if value.is_floating_point() else value.cpu()
    return value


def reference(op: str, *args, **options) -> torch.Tensor:
    """<op>_ref on the same inputs upcast to fp32 (CPU): the exact answer every dtype is judged by."""
    return registry.resolve(op, "ref")(*_cast(args, torch.float32),
                                       **{k: _cast(v, torch.float32) for k, v in options.items()})


def reference_error(op: str, exact: torch.Tensor, inputs: tuple, options: dict | None = None) -> float:
    """Max |fp32 reference - the torch composition in float64| on ``inputs``: the reference's own error."""
    wide = {k: _cast(v, torch.float64) for k, v in (options or {}).items()}
    truth = registry.resolve(op, "torch")(*_cast(inputs, torch.float64), **wide).double()
    return float((exact.double().cpu() - truth).abs().max())


def assert_close(op: str, impl: str, out: torch.Tensor, exact: torch.Tensor, torch_out: torch.Tensor,
                 dtype: torch.dtype, inputs: tuple | None = None, options: dict | None = None) -> None:
    """out: impl's result in ``dtype``; exact: fp32 reference; torch_out: PyTorch's own result in ``dtype``;
    inputs, options: the op's arguments and keyword options (for the FP32 bound).

    FP32: table tolerance plus the reference's own error. FP16/BF16: at most 2x PyTorch's own error
    plus a small atol.
    """
    assert out.dtype == dtype, f"{impl} returned {out.dtype}, expected {dtype}"
    assert out.shape == exact.shape, f"{impl} returned shape {tuple(out.shape)}, expected {tuple(exact.shape)}"
    out, exact = out.float().cpu(), exact.float().cpu()
    assert torch.isfinite(out).all(), f"{impl} produced non-finite values"
    if dtype == torch.float32:
        # the table's atol plus the fp32 reference's own error on this machine (measured against a
        # float64 evaluation): torch's fp32 path, hence the reference, moves with the CPU's ISA
        atol, rtol = FP32_TOLERANCE[op]
        atol += reference_error(op, exact, inputs, options) if inputs is not None else 0.0
        torch.testing.assert_close(out, exact, atol=atol, rtol=rtol, msg=lambda m: f"{op}/{impl}: {m}")
        return
    own_error = (out - exact).abs().max().item()
    torch_error = (torch_out.float().cpu() - exact).abs().max().item()
    bound = LOW_PRECISION_FACTOR * torch_error + LOW_PRECISION_ATOL[dtype]
    assert own_error <= bound, (
        f"{op}/{impl} {dtype}: max error {own_error:.3g} > {LOW_PRECISION_FACTOR} x torch's {torch_error:.3g} "
        f"+ {LOW_PRECISION_ATOL[dtype]}"
    )

