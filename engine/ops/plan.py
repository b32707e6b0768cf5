"""The kernel plan: which implementation every op of the encoder runs, decided once per engine.

``plan_for(device, precision, kernels, model_shape)`` is the one place the choice is made. The
result, a frozen ``KernelPlan``, is read by the encoder (``engine/model``), the quantized linears,
serving (may batches share the cores?) and ``bertrt info``; nothing changes it afterwards.

With ``kernels="auto"`` every candidate (the C++ kernels of each ISA variant this CPU runs, PyTorch's
own composition, Triton/CUDA on a GPU, registered extras) must first pass its self-check on this
machine, then the candidates are timed at the model's shapes in three token buckets and the fastest
wins per bucket (``bertrt.ops.measure``; cached, so only the first load on a machine pays). An
explicit ``kernels="torch"|"cpu"|...`` is taken as asked. ``batch_invariant=True`` keeps only
implementations whose result for a sequence does not depend on the rest of its batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from ..errors import InputError
from . import gemm_choice, measure, registry
from .measure import BUCKETS
from .registry import KernelUnavailable

log = logging.getLogger("bertrt.ops")

PLANNED_OPS = ("embedding_layer_norm", "attention", "bias_gelu", "bias_residual_layer_norm")
KERNEL_CHOICES = ("auto", "ref", "torch", "cpu", "cuda", "triton")
GEMMS = ("cpu", "torch")  # bertrt's packed FP32 GEMM with fused epilogues | oneDNN/MKL/cuBLAS via F.linear
INT8_GEMMS = ("packed", "onednn", "op")
# Implementations whose output for one sequence depends on the other sequences of the batch: the
# padded SDPA fallback (the padded length changes its blocking), and library GEMMs (oneDNN/MKL/cuBLAS
# pick kernels and split K by the number of rows).
NOT_INVARIANT = {("attention", "torch"), ("gemm", "torch"), ("int8", "onednn")}


def invariant(op: str, impl: str) -> bool:
    return (op, impl.split(":", 1)[0]) not in NOT_INVARIANT


@dataclass(frozen=True)
class OpChoice:
    """The implementation of one op per token bucket (dense batches; ``ragged`` for attention over
    sequences of mixed lengths, where padding-free kernels save the padded work)."""

    op: str
    buckets: tuple[tuple[int, str], ...]
    reason: str
    ragged: tuple[tuple[int, str], ...] = ()

    def impl_for(self, tokens: int, is_ragged: bool = False) -> str:
        table = self.ragged if (is_ragged and self.ragged) else self.buckets
        for bound, impl in table:
            if tokens <= bound:
                return impl
        return table[-1][1]

    @property
    def impls(self) -> list[str]:
        return sorted({impl for _, impl in (*self.buckets, *self.ragged)})


@dataclass(frozen=True)
class KernelPlan:
    """device: "cpu"|"cuda"; precision: "float32"|"bfloat16"|"float16"; ops: one OpChoice per op of
    PLANNED_OPS; gemm: the float GEMM ("cpu": bertrt's packed FP32 GEMM, bias and GELU fused, run on
    FP32 copies of the activations in BF16/FP16; "torch": F.linear); int8: the INT8 GEMM of quantized
    linears ("packed" | "onednn" | "op"; a linear's own explicit kernel wins); defer_bias: leave
    linear biases to the fused epilogue kernels (GPU); source: "measured" | "static" | "explicit"."""

    device: str = "cpu"
    precision: str = "float32"
    requested: str = "auto"
    ops: tuple[OpChoice, ...] = ()
    gemm: OpChoice = OpChoice("gemm", ((BUCKETS[-1], "torch"),), "default")
    int8: str = "auto"  # "auto": each quantized linear's own rule (a model used outside an engine)
    int8_reason: str = "unplanned"
    defer_bias: bool = False
    batch_invariant: bool = False
    source: str = "static"

    def choice(self, op: str) -> OpChoice | None:
        return next((c for c in self.ops if c.op == op), None)

    def impl(self, op: str, tokens: int = 1, is_ragged: bool = False) -> str:
        """The implementation ``op`` runs for a batch of ``tokens`` tokens ("auto" when unplanned)."""
        found = self.choice(op)
        return "auto" if found is None else found.impl_for(tokens, is_ragged)

    def gemm_for(self, tokens: int) -> str:
        return self.gemm.impl_for(tokens)

    @property
    def shares_cores(self) -> bool:
        """True when every GEMM is bertrt's own CPU kernel, which takes its thread count per call, so
        several batches can run at once on shared cores (torch's GEMMs would oversubscribe them)."""
        return self.device == "cpu" and all(impl.startswith("cpu") for impl in self.gemm.impls)

    def as_dict(self) -> dict:
        def table(choice: OpChoice) -> dict:
            out = {"buckets": {f"<={b}": i for b, i in choice.buckets}, "reason": choice.reason,
                   "batch_invariant": all(invariant(choice.op, i) for i in choice.impls)}
            if choice.ragged:
                out["ragged"] = {f"<={b}": i for b, i in choice.ragged}
            return out

        return {"device": self.device, "precision": self.precision, "requested": self.requested,
                "source": self.source, "batch_invariant": self.batch_invariant, "defer_bias": self.defer_bias,
                "ops": {c.op: table(c) for c in self.ops}, "gemm": table(self.gemm),
                "int8": {"kernel": self.int8, "reason": self.int8_reason,
                         "batch_invariant": invariant("int8", self.int8)}}

    def __str__(self) -> str:
        lines = [f"KernelPlan({self.device}, {self.precision}, kernels={self.requested!r}, source={self.source}"
                 + (", batch_invariant" if self.batch_invariant else "") + ")"]
        for choice in (*self.ops, self.gemm):
            buckets = "  ".join(f"<={b}: {i}" for b, i in choice.buckets)
            ragged = ("   ragged " + "  ".join(f"<={b}: {i}" for b, i in choice.ragged)) if choice.ragged else ""
            lines.append(f"  {choice.op:<26} {buckets}{ragged}   ({choice.reason})")
        lines.append(f"  {'int8 gemm':<26} {self.int8}   ({self.int8_reason})")
        return "\n".join(lines)


def validate_kernels(kernels: str) -> str:
    base = kernels.split(":", 1)[0] if isinstance(kernels, str) else kernels
    if not isinstance(kernels, str) or base not in KERNEL_CHOICES or (":" in kernels and base != "cpu"):
        raise InputError(f"kernels must be one of {KERNEL_CHOICES} or 'cpu:<isa>', got {kernels!r}")
    return kernels


def model_shape_of(config) -> dict:
    """The widths the candidates are checked and timed at, from an EncoderConfig-like object, and what
    its family needs of the fused ops beyond BERT's (``measure.FAMILY_OPTIONS``; only the keys that
    differ, so a BERT's shape, and its cached measurements, stay as they were)."""
    shape = {"hidden": config.hidden_size, "heads": config.num_attention_heads,
             "intermediate": config.intermediate_size, "eps": float(config.layer_norm_eps),
             "gelu": "tanh" if getattr(config, "gelu_approximation", "none") == "tanh" else "none"}
    family = getattr(config, "family", None)
    modern = bool(getattr(family, "modern", False))  # pre-norm, GeGLU (ModernBERT)
    needs = {"gated": modern, "prenorm": modern, "norm_bias": bool(getattr(config, "norm_bias", True)),
             "position_table": bool(getattr(family, "position_embeddings", True)),
             "type_table": bool(getattr(family, "token_type_table", True))}
    return {**shape, **measure.family_options(needs)}


def plan_for(device: str, precision: str, kernels: str = "auto", model_shape: dict | None = None,
             batch_invariant: bool = False, quantized: bool = False) -> KernelPlan:
    """The one function that builds a KernelPlan. device: "cpu"|"cuda[:N]"; precision: the compute
    dtype of the float ops; model_shape: ``model_shape_of(config)`` (None: the static order, untimed)."""
    kernels = validate_kernels(kernels)
    device_type = torch.device(device).type
    measured = kernels == "auto" and model_shape is not None and measure.enabled()
    ops = tuple(_choose_op(op, device_type, precision, kernels, model_shape, batch_invariant, measured)
                for op in PLANNED_OPS)
    gemm = OpChoice("gemm", *gemm_choice.choose_gemm(device_type, precision, kernels, model_shape, batch_invariant,
                                                    measured))
    int8, int8_reason = gemm_choice.choose_int8(device_type, kernels, model_shape, batch_invariant,
                                                   measured and quantized)
    if measured:
        measure.store(device_type).save()
    source = "explicit" if kernels != "auto" else ("measured" if measured else "static")
    return KernelPlan(device_type, precision, kernels, ops, gemm, int8, int8_reason,
                      defer_bias=device_type == "cuda", batch_invariant=batch_invariant, source=source)


def with_int8(plan: KernelPlan, model_shape: dict | None) -> KernelPlan:
    """The same plan with its INT8 GEMM chosen (measured) for a model that has just been quantized."""
    measured = plan.requested == "auto" and model_shape is not None and measure.enabled()
    int8, reason = gemm_choice.choose_int8(plan.device, plan.requested, model_shape, plan.batch_invariant,
                                              measured)
    if measured:
        measure.store(plan.device).save()
    return dataclasses.replace(plan, int8=int8, int8_reason=reason)


# ---- per-op choice --------------------------------------------------------------------------------


def candidates(op: str, device_type: str) -> list[str]:
    """Every implementation of ``op`` that could run on ``device_type`` here, preference order."""
    found = []
    for impl in registry.AUTO_ORDER.get(device_type, ("torch",)):
        if impl == "cpu":
            if registry.availability(op)["cpu"] is None:
                found += [f"cpu:{isa}" for isa in _cpu_isas()]
        elif registry.availability(op)[impl] is None:
            found.append(impl)
    return found + registry.extra_candidates(op, device_type)


def _cpu_isas() -> list[str]:
    from . import cpu_kernels  # bertrt._C: present whenever availability says "cpu" runs

    # the scalar variant is the portable fallback for tests, ~10x slower than any vector one
    isas = [isa for isa in cpu_kernels.supported_isas() if isa != "scalar"]
    return isas or ["scalar"]


def _static(op: str, device_type: str, batch_invariant: bool, dims: dict) -> str:
    """No measurement: the first candidate (the ISA default for cpu) that is invariant if asked and
    whose limits take the model's dims."""
    for impl in candidates(op, device_type):
        if impl in registry.extra_candidates(op, device_type):
            continue
        if registry.limit_reason(op, impl.split(":", 1)[0], **dims):
            continue
        if not batch_invariant or invariant(op, impl):
            return impl
    return "ref"


def _dims(op: str, model_shape: dict | None) -> dict:
    """The model dims an implementation's limits are checked against (attention: head_dim)."""
    if op != "attention" or not model_shape:
        return {}
    return {"head_dim": model_shape["hidden"] // model_shape["heads"]}


def _choose_op(op: str, device_type: str, precision: str, kernels: str, model_shape: dict | None,
               batch_invariant: bool, measured: bool) -> OpChoice:
    dims = _dims(op, model_shape)
    if kernels != "auto":
        impl = kernels
        if batch_invariant and not invariant(op, impl):
            raise InputError(f"kernels={kernels!r}: {op}'s {impl} implementation is not batch-invariant")
        limit = registry.limit_reason(op, impl.split(":", 1)[0], **dims)
        if limit:
            raise InputError(f"kernels={kernels!r} cannot run this model: {op}: {limit}")
        try:
            registry.pick(op, device_type, impl)
        except KernelUnavailable as exc:
            raise KernelUnavailable(f"kernels={kernels!r} cannot run here: {exc}") from None
        return OpChoice(op, ((BUCKETS[-1], impl),), "requested")
    if not measured:
        impl = _static(op, device_type, batch_invariant, dims)
        return OpChoice(op, ((BUCKETS[-1], impl),), "static order (dispatch measurement off or no model shape)")
    passing, failed = [], []
    for impl in candidates(op, device_type):
        if batch_invariant and not invariant(op, impl):
            continue
        limit = registry.limit_reason(op, impl.split(":", 1)[0], **dims)
        if limit:
            failed.append(f"{impl} ({limit})")
            continue
        record = measure.checked(op, impl, precision, model_shape, device_type)
        (passing if record["passed"] else failed).append(impl)
    if not passing:
        log.warning("%s: no candidate passed its self-check here (%s); using the reference", op, failed)
        return OpChoice(op, ((BUCKETS[-1], "ref"),), f"every candidate failed its self-check: {failed}")
    reason = "measured" + (f"; failed self-check: {', '.join(failed)}" if failed else "")
    if batch_invariant:
        impl = _fastest_everywhere(op, passing, precision, model_shape, device_type)
        return OpChoice(op, ((BUCKETS[-1], impl),), reason + "; batch-invariant: one implementation at every size")
    buckets = _fastest(op, passing, precision, model_shape, device_type, ragged=False)
    ragged = _fastest(op, passing, precision, model_shape, device_type, ragged=True) if op == "attention" else ()
    return OpChoice(op, buckets, reason, ragged)


def bucket_shape(model_shape: dict, tokens: int, ragged: bool) -> dict:
    """The timing input of a bucket: ``tokens`` tokens in sequences of 128 (dense) or of lengths
    spread over 16..128 (ragged, the 32x16-128 kind of batch)."""
    if ragged:
        lengths, i = [], 0
        while sum(lengths) < tokens:
            lengths.append(min(16 + (i * 53) % 113, tokens - sum(lengths)))
            i += 1
    else:
        size = min(128, tokens)
        lengths = [size] * max(1, tokens // size)
    return {**model_shape, "tokens": sum(lengths), "lengths": lengths}


def _timing_shapes(op: str, model_shape: dict) -> list[dict]:
    return [bucket_shape(model_shape, bound, ragged) for bound in BUCKETS
            for ragged in ((False, True) if op == "attention" else (False,))]


def _fastest_everywhere(op: str, passing: list[str], precision: str, model_shape: dict, device_type: str) -> str:
    """For batch invariance, one implementation at every size: two implementations that are each
    invariant still round differently (an AVX2 and an AVX-512 kernel sum in other orders), so a plan
    that switched between them by token count would move a sequence's result with its batch's size.
    The pick: the lowest sum over the timing shapes of time / that shape's best time."""
    shapes = _timing_shapes(op, model_shape)
    times = {impl: [measure.timed(op, impl, precision, shape, device_type) for shape in shapes] for impl in passing}
    best = [min(t[i] for t in times.values()) for i in range(len(shapes))]
    return min(passing, key=lambda impl: sum(t / b if 0 < b < math.inf else 1.0 for t, b in zip(times[impl], best)))


def _fastest(op: str, passing: list[str], precision: str, model_shape: dict, device_type: str,
             ragged: bool) -> tuple[tuple[int, str], ...]:
    table = []
    for bound in BUCKETS:
        shape = bucket_shape(model_shape, bound, ragged)
        times = {impl: measure.timed(op, impl, precision, shape, device_type) for impl in passing}
        table.append((bound, min(times, key=times.get)))
    return tuple(table)
