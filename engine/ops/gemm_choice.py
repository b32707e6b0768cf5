"""The GEMM part of the kernel plan: which float GEMM and which INT8 GEMM the encoder's linears run.

Float GEMM candidates on the CPU: bertrt's packed FP32 GEMM (``linear`` op, ``cpu:<isa>``, bias and
GELU fused in its epilogue; BF16/FP16 activations run through it as FP32 copies) and ``torch``
(F.linear: oneDNN/MKL, which runs BF16 natively on AMX/AVX512-BF16). On a GPU, cuBLAS via torch.

INT8 candidates (the kernels of ``bertrt.quant.Int8Linear``): ``packed`` (bertrt's u8 x 7-bit AVX2
kernel, activation quantization fused), ``onednn`` (torch.ops.onednn.qlinear_pointwise: VNNI/AMX
where present) and ``op`` (the ``int8_linear`` op after a separate quantization step).

Each candidate is self-checked against the reference and timed on one layer's four GEMMs at the
model's widths; the fastest passing one wins per token bucket (``bertrt.ops.plan``).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import measure, registry
from .int8_linear import pack_int8_weight, quantize_per_token, quantize_per_token_u8
from .linear import pack_weight
from .measure import BUCKETS
from .registry import KernelUnavailable

log = logging.getLogger("bertrt.ops")


@functools.cache
def has_int8_dot() -> bool:
    """True when the CPU has VNNI or AMX-INT8 (int8 dot products accumulate in int32 without saturation)."""
    flags = measure.cpu_identity()[1]
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


@functools.cache
def has_amx_int8() -> bool:
    """True when the CPU has AMX-INT8, where oneDNN's tile kernels outrun bertrt's VNNI/AVX2 loops."""
    return "amx_int8" in measure.cpu_identity()[1]


def packed_available() -> str | None:
    """None when bertrt's packed int8 CPU kernel is built and this CPU runs a vector variant of it."""
    reason = registry.availability("int8_linear")["cpu"]
    if reason:
        return reason
    from . import cpu_kernels  # bertrt._C: importable once availability says so

    if not hasattr(cpu_kernels._C, "int8_linear_packed"):
        return "bertrt._C predates int8_linear_packed: rebuild it"
    if cpu_kernels.active_isa() == "scalar":
        return "no AVX2 on this CPU (the scalar variant is for tests)"
    return None


@functools.cache
def onednn_available() -> str | None:
    """None when torch's oneDNN int8 linear runs here, else the reason it does not."""
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN (mkldnn)"
    try:
        w = torch.ones(8, 8, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        x = torch.full((2, 8), 129, dtype=torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 128, packed, torch.ones(8), torch.zeros(8, dtype=torch.long),
                                               None, 1.0, 0, torch.float32, "none", [None], "")
        if not torch.allclose(y, torch.full((2, 8), 8.0)):
            return f"oneDNN int8 linear gave wrong results ({y[0, 0].item()} for 8)"
    except Exception as exc:  # op missing in this build, or no int8 ISA
        return f"torch.ops.onednn.qlinear_pointwise failed: {exc}"
    return None


def _layer_gemms(shape: dict) -> list[tuple[int, int, str]]:
    """(out_features, in_features, activation) of one encoder layer's four GEMMs."""
    h, i = shape["hidden"], shape["intermediate"]
    act = "gelu_tanh" if shape.get("gelu") == "tanh" else "gelu"
    return [(3 * h, h, "none"), (h, h, "none"), (i, h, act), (h, i, "none")]


def _gemm_runner(impl: str, precision: str, shape: dict, tokens: int):
    """A callable running one layer's GEMMs with ``impl`` on ``tokens`` rows (weights prepared once)."""
    g = torch.Generator().manual_seed(3)
    dtype = measure.DTYPES[precision]
    layers = [(torch.randn(n, k, generator=g).div_(k**0.5).to(dtype), torch.randn(n, generator=g).to(dtype), a)
              for n, k, a in _layer_gemms(shape)]
    inputs = {k: torch.randn(tokens, k, generator=g).to(dtype) for _, k, _ in _layer_gemms(shape)}
    if impl.startswith("cpu"):
        linear = registry.resolve("linear", impl)
        packed = [(pack_weight(w, b), a) for w, b, a in layers]
        x32 = {k: x.float() for k, x in inputs.items()}
        return lambda: [linear(x32[p.in_features], p, None, a) for p, a in packed]

    def run_torch():
        out = []
        for w, b, a in layers:
            y = F.linear(inputs[w.shape[1]], w, b)
            out.append(F.gelu(y, approximate="tanh" if a == "gelu_tanh" else "none") if a != "none" else y)
        return out

    return run_torch


def _gemm_candidates(precision: str, batch_invariant: bool) -> list[str]:
    found = []
    if registry.availability("linear")["cpu"] is None:
        from . import cpu_kernels  # bertrt._C

        found += [f"cpu:{isa}" for isa in cpu_kernels.supported_isas() if isa != "scalar"]
    if not batch_invariant:
        found.append("torch")
    return found


def choose_gemm(device_type: str, precision: str, kernels: str, model_shape: dict | None, batch_invariant: bool,
                measured: bool) -> tuple[tuple[tuple[int, str], ...], str]:
    """(((bucket bound, impl), ...), reason): the float GEMM per token bucket."""

    def fixed(impl: str, reason: str):
        return ((BUCKETS[-1], impl),), reason

    if device_type != "cpu":
        if batch_invariant:
            raise InputError("batch_invariant=True is not available on a GPU: cuBLAS GEMMs split work by the "
                             "number of rows (run on the CPU, or without batch_invariant)")
        return fixed("torch", "GPU: cuBLAS through F.linear")
    own = _gemm_candidates(precision, batch_invariant=True)
    if batch_invariant:
        if not own:
            raise InputError("batch_invariant=True needs bertrt's CPU GEMM (bertrt._C with AVX2 or better): "
                             f"{registry.availability('linear')['cpu'] or 'no vector ISA on this CPU'}")
        return fixed(own[0], "batch-invariant: bertrt's packed GEMM computes every row the same way")
    if kernels.startswith("cpu"):
        if not own:
            raise KernelUnavailable(f"kernels={kernels!r} needs the CPU GEMM: "
                                    f"{registry.availability('linear')['cpu'] or 'no vector ISA on this CPU'}")
        if precision != "float32":
            return fixed("torch", f"kernels={kernels!r}: {precision} GEMMs stay in oneDNN")
        return fixed(kernels if ":" in kernels else own[0], "requested")
    if kernels != "auto" or not own:
        return fixed("torch", "requested" if kernels != "auto" else "bertrt's CPU GEMM is not available here")
    if not measured or model_shape is None:
        if precision == "float32":
            return fixed(own[0], "static order: bertrt's packed FP32 GEMM")
        return fixed("torch", f"static order: oneDNN runs {precision}")
    passing = [impl for impl in own if measure.checked("linear", impl, "float32", model_shape, "cpu")["passed"]]
    table = []
    for bound in BUCKETS:
        times = {impl: _timed_gemm(impl, precision, model_shape, bound) for impl in passing + ["torch"]}
        table.append((bound, min(times, key=times.get)))
    return tuple(table), "measured (one layer's four GEMMs)"


def _timed_gemm(impl: str, precision: str, shape: dict, tokens: int) -> float:
    s = measure.store("cpu")
    key = f"time|gemm|{impl}|{precision}|{measure.shape_key({**shape, 'tokens': tokens})}"
    record = s.get(key)
    if record is None:
        record = {"seconds": measure.best_seconds(_gemm_runner(impl, precision, shape, tokens))}
        s.put(key, record)
    return record["seconds"]


# ---- INT8 -----------------------------------------------------------------------------------------


def int8_candidates(device_type: str, batch_invariant: bool) -> list[str]:
    if device_type != "cpu":
        return ["op"]
    found = []
    if packed_available() is None:
        found.append("packed")
    if onednn_available() is None and not batch_invariant:
        found.append("onednn")
    return found + ["op"]


def _static_int8(device_type: str, batch_invariant: bool) -> tuple[str, str]:
    found = int8_candidates(device_type, batch_invariant)
    if "packed" in found and (not has_amx_int8() or batch_invariant):
        why = "batch-invariant" if batch_invariant else "no AMX-INT8 here"
        return "packed", f"static order: bertrt's packed kernel ({why})"
    if "onednn" in found:
        return "onednn", "static order: oneDNN int8 (AMX-INT8)"
    return found[0], "static order"


def choose_int8(device_type: str, kernels: str, model_shape: dict | None, batch_invariant: bool,
                measured: bool) -> tuple[str, str]:
    """(kernel, reason) for quantized linears whose own ``kernel`` is "auto"."""
    if kernels not in ("auto", "cpu") and not kernels.startswith("cpu:"):
        return "op", f"kernels={kernels!r}: the int8_linear op"
    if not measured or model_shape is None or device_type != "cpu":
        return _static_int8(device_type, batch_invariant)
    times = {impl: _timed_int8(impl, model_shape) for impl in int8_candidates(device_type, batch_invariant)}
    best = min(times, key=times.get)
    detail = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
    return best, f"measured at {BUCKET_INT8} tokens: {detail}"


BUCKET_INT8 = 512


def _int8_runner(impl: str, shape: dict, tokens: int):
    g = torch.Generator().manual_seed(5)
    layers = []
    for n, k, act in _layer_gemms(shape):
        w_q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        layers.append((w_q, torch.rand(n, generator=g) * 0.01, torch.randn(n, generator=g), act))
    xs = {k: torch.randn(tokens, k, generator=g) for _, k, _ in _layer_gemms(shape)}
    if impl == "packed":
        from . import cpu_kernels  # bertrt._C

        packed = [(pack_int8_weight(w, s, b, weight_bits=cpu_kernels.packed_weight_bits()), a)
                  for w, s, b, a in layers]
        return lambda: [cpu_kernels.int8_linear_packed(xs[p.in_features], p, a) for p, a in packed]
    if impl == "onednn":
        prepared = [(torch.ops.onednn.qlinear_prepack(w, None), s, b, a) for w, s, b, a in layers]
        zero = {s.shape[0]: torch.zeros(s.shape[0], dtype=torch.long) for _, s, _, _ in layers}

        def run_onednn():
            out = []
            for (packed_w, s, b, a), (_, k, _) in zip(prepared, _layer_gemms(shape)):
                x_u8, x_scale = quantize_per_token_u8(xs[k])
                y = torch.ops.onednn.qlinear_pointwise(x_u8, 1.0, 128, packed_w, s, zero[s.shape[0]], None, 1.0, 0,
                                                       torch.float32, "none", [None], "")
                y = torch.addcmul(b, y, x_scale[:, None])
                out.append(F.gelu(y) if a != "none" else y)
            return out

        return run_onednn

    def run_op():
        out = []
        for (w, s, b, a), (_, k, _) in zip(layers, _layer_gemms(shape)):
            x_q, x_scale = quantize_per_token(xs[k])
            out.append(registry.pick("int8_linear", "cpu")(x_q, x_scale, w, s, b, a, torch.float32))
        return out

    return run_op


def _timed_int8(impl: str, shape: dict) -> float:
    s = measure.store("cpu")
    key = f"time|int8|{impl}|{measure.shape_key({**shape, 'tokens': BUCKET_INT8})}"
    record = s.get(key)
    if record is None:
        record = {"seconds": measure.best_seconds(_int8_runner(impl, shape, BUCKET_INT8))}
        s.put(key, record)
    return record["seconds"]
