"""Which device, backend and precision bertrt uses when the caller says "auto".

The picks are data: ``GPU_POLICY`` and ``CPU_POLICY`` below (documented in docs/runtime.md). The
first rule that matches the device gives an ordered list of (backend, precision) picks; the first
pick whose backend can run here wins, and each skipped pick is logged with the reason. The
rule's ``tune`` list adds candidates that only ``bertrt tune`` tries, because they trade accuracy
(int8, fp8) or because the table's guess may be wrong for one machine: tune measures them, keeps
those that pass the accuracy gate, and stores the fastest; ``resolve`` prefers that stored winner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import hardware
from ..model import default_model_dir
from . import tune_cache
from .backends import BACKENDS
from .base import CANONICAL, DTYPES, PRECISIONS, QUANTIZED, BackendUnavailable

__all__ = ["CANONICAL", "CPU_POLICY", "DTYPES", "GPU_POLICY", "PRECISIONS", "QUANTIZED", "Choice", "CpuRule",
           "GpuRule", "availability_here", "checkpoint_placement", "choose_device", "choose_precision", "cpu_rule",
           "gpu_rule", "pick", "resolve", "rule_for", "simulated", "tune_candidates"]

log = logging.getLogger("bertrt.runtime")

Pick = tuple[str, str]  # (backend, precision)


@dataclass(frozen=True)
class GpuRule:
    """Applies to GPUs with compute capability >= min_sm (rules are ordered, highest first)."""

    family: str
    min_sm: int
    examples: str
    picks: tuple[Pick, ...]
    tune: tuple[Pick, ...]
    why: str

    def matches(self, gpu: hardware.GpuInfo) -> bool:
        return gpu.sm >= self.min_sm


@dataclass(frozen=True)
class CpuRule:
    """Applies to CPUs whose best ISA tier (``CpuInfo.isa``) is ``isa`` and, if set, that
    have (or lack) native BF16."""

    family: str
    isa: tuple[str, ...]
    examples: str
    picks: tuple[Pick, ...]
    tune: tuple[Pick, ...]
    why: str
    native_bf16: bool | None = None

    def matches(self, cpu: hardware.CpuInfo) -> bool:
        return cpu.isa in self.isa and (self.native_bf16 is None or cpu.native_bf16 == self.native_bf16)


GPU_POLICY: tuple[GpuRule, ...] = (
    GpuRule("Ada, Hopper, Blackwell", 89, "L4, L40S, H100, H200, B200",
            picks=(("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "bfloat16")),
            tune=(("tensorrt", "fp8"), ("tensorrt", "int8"), ("tensorrt", "bfloat16"), ("torch", "float16")),
            why="FP16 tensor cores behind TensorRT's fused attention and GEMM kernels (LayerNorm kept in "
                "FP32). FP8 doubles GEMM throughput again but is post-training quantized, so only `bertrt "
                "tune` picks it, after the accuracy gate."),
    GpuRule("Ampere", 80, "A100, A30, A10, A40, RTX 30xx",
            picks=(("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "bfloat16")),
            tune=(("tensorrt", "int8"), ("tensorrt", "bfloat16"), ("torch", "float16")),
            why="FP16 and BF16 tensor cores run at the same rate; FP16 keeps 3 more mantissa bits where "
                "TensorRT guards LayerNorm. Without TensorRT or ORT, torch uses BF16 (no overflow risk)."),
    GpuRule("Turing", 75, "T4, RTX 20xx",
            picks=(("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "float16")),
            tune=(("tensorrt", "int8"),),
            why="FP16 tensor cores; no BF16 in hardware. INT8 tensor cores (2x FP16) are left to tune."),
    GpuRule("Volta", 70, "V100",
            picks=(("tensorrt", "float16"), ("onnxruntime", "float16"), ("torch", "float16")),
            tune=(),
            why="FP16 tensor cores; no BF16, no INT8 tensor cores."),
    GpuRule("Pascal and older", 0, "P100, P4, GTX 10xx",
            picks=(("tensorrt", "float32"), ("onnxruntime", "float32"), ("torch", "float32")),
            tune=(("tensorrt", "float16"), ("torch", "float16")),
            why="no tensor cores, and FP16 arithmetic runs at 1/64 rate on sm61 parts: FP32."),
)

CPU_POLICY: tuple[CpuRule, ...] = (
    CpuRule("AMX", ("amx",), "Sapphire Rapids, Emerald Rapids, Granite Rapids",
            picks=(("torch", "bfloat16"),),
            tune=(("openvino", "bfloat16"), ("onnxruntime", "int8"), ("openvino", "int8"), ("torch", "float32"),
                  ("onnxruntime", "float32")),
            why="oneDNN runs BF16 GEMMs on the AMX tiles, several times AVX-512 FP32 throughput."),
    CpuRule("AVX-512 with BF16", ("avx512",), "Cooper Lake, Zen 4, Zen 5",
            picks=(("torch", "bfloat16"),),
            tune=(("openvino", "bfloat16"), ("onnxruntime", "int8"), ("openvino", "int8"), ("torch", "float32"),
                  ("onnxruntime", "float32")),
            why="AVX512-BF16 dot products double FP32 GEMM throughput at BF16 accuracy.", native_bf16=True),
    CpuRule("AVX-512", ("avx512",), "Skylake-SP, Cascade Lake, Ice Lake",
            picks=(("torch", "float32"),),
            tune=(("onnxruntime", "float32"), ("openvino", "float32"), ("onnxruntime", "int8"), ("openvino", "int8")),
            why="no BF16 hardware (emulated BF16 is slower than FP32); INT8 with VNNI is faster but "
                "quantized, so only tune picks it after the accuracy gate.", native_bf16=False),
    CpuRule("AVX2", ("avx2",), "Haswell to Alder Lake, Zen 1-3",
            picks=(("torch", "float32"),),
            tune=(("onnxruntime", "float32"), ("openvino", "float32"), ("onnxruntime", "int8"), ("openvino", "int8")),
            why="FP32 is the only fast float path; ONNX Runtime and OpenVINO are measured by tune."),
    CpuRule("other", ("scalar",), "ARM, pre-AVX2 x86",
            picks=(("torch", "float32"),),
            tune=(("onnxruntime", "float32"),),
            why="no vector ISA bertrt dispatches on: PyTorch's own kernels in FP32."),
)


@dataclass
class Choice:
    """What ``resolve`` / ``pick`` decided: backend, precision, why, and the fallbacks to try after."""

    backend: str
    precision: str
    reason: str
    source: str = "policy"  # "policy" | "tuned" | "explicit"
    candidates: list[Pick] = field(default_factory=list)  # this pick first, then its fallbacks
    skipped: list[str] = field(default_factory=list)

    @property
    def explicit(self) -> bool:
        return self.source == "explicit"

    def as_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "source": self.source, "reason": self.reason,
                "fallbacks": [f"{b}/{p}" for b, p in self.candidates[1:]], "skipped": self.skipped}


def choose_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is visible to torch")
    return device


def choose_precision(device: str, dtype: str | torch.dtype) -> str:
    """"auto": BF16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), FP16
    on older GPUs, else FP32 (on an AVX2-only CPU, BF16 GEMMs are emulated and slower than FP32).
    Also accepts "int8" and "fp8" (quantized by the backend)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in CANONICAL:
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return CANONICAL[dtype]
    if dtype != "auto":
        if dtype in QUANTIZED:
            return QUANTIZED[dtype]
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES) + sorted(QUANTIZED)} or 'auto'")
        return CANONICAL[DTYPES[dtype]]
    if torch.device(device).type == "cuda":
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        return "bfloat16" if major >= 8 else "float16"
    return "bfloat16" if hardware.cpu().native_bf16 else "float32"


def gpu_rule(gpu: hardware.GpuInfo) -> GpuRule:
    return next(rule for rule in GPU_POLICY if rule.matches(gpu))


def cpu_rule(cpu: hardware.CpuInfo) -> CpuRule:
    return next((rule for rule in CPU_POLICY if rule.matches(cpu)), CPU_POLICY[-1])


def rule_for(device: str, cpu: hardware.CpuInfo | None = None,
             gpu: hardware.GpuInfo | None = None) -> GpuRule | CpuRule:
    """The policy row for ``device`` ("cpu", "cuda", "cuda:N"); cpu/gpu simulate hardware in tests."""
    if torch.device(device).type == "cuda":
        if gpu is None:
            index = torch.device(device).index or 0
            gpus = hardware.gpus()
            if index >= len(gpus):
                raise ValueError(f"no CUDA device {index}")
            gpu = gpus[index]
        return gpu_rule(gpu)
    return cpu_rule(cpu or hardware.cpu())


Availability = Callable[[str, str], str | None]  # (backend, precision) -> None, or why not


def availability_here(device: str) -> Availability:
    """Ask the registry whether each (backend, precision) can run on ``device`` on this machine."""
    kind = torch.device(device).type

    def unavailable(name: str, precision: str) -> str | None:
        backend = BACKENDS.get(name)
        return f"backend {name!r} is not registered" if backend is None else backend.unavailable(kind, precision)

    return unavailable


def simulated(reasons: Mapping[str, str | None]) -> Availability:
    """Availability from a {backend: None | reason} map (tests: "TensorRT missing", ...)."""
    return lambda name, precision: reasons.get(name, f"backend {name!r} is not installed")


def pick(device: str, cpu: hardware.CpuInfo | None = None, gpu: hardware.GpuInfo | None = None,
         available: Availability | None = None, precision: str | None = None) -> Choice:
    """The policy's choice for ``device``: the first pick of the matching rule that can run.

    precision: a precision the caller fixed (dtype != "auto"): only picks in it count (the row's
    tune extras included), torch in that precision is the last resort for float precisions, and
    BackendUnavailable is raised when nothing here runs it.
    """
    rule = rule_for(device, cpu, gpu)
    available = available or availability_here(device)
    picks = list(rule.picks)
    if precision is not None:
        picks = [p for p in picks + list(rule.tune) if p[1] == precision]
        if precision not in QUANTIZED.values():
            picks.append(("torch", precision))
    skipped, usable = [], []
    for name, prec in dict.fromkeys(picks):
        reason = available(name, prec)
        if reason is None:
            usable.append((name, prec))
        else:
            skipped.append(f"{name}/{prec}: {reason}")
    if not usable:
        if precision is not None:
            raise BackendUnavailable(f"no backend runs {precision} on {device} here"
                                     + (": " + "; ".join(skipped) if skipped else ""))
        usable = [("torch", "float32")]
    backend, prec = usable[0]
    reason = f"policy row '{rule.family}' ({rule.examples}): {rule.why}"
    if skipped:
        reason += " Skipped: " + "; ".join(skipped) + "."
    return Choice(backend, prec, reason, "policy", usable, skipped)


def tune_candidates(device: str, cpu: hardware.CpuInfo | None = None, gpu: hardware.GpuInfo | None = None,
                    available: Availability | None = None) -> tuple[list[Pick], list[str]]:
    """(candidates, skipped): every (backend, precision) ``bertrt tune`` measures on ``device``:
    the rule's picks, its tune extras and torch float32 (the reference), those that can run here."""
    rule = rule_for(device, cpu, gpu)
    available = available or availability_here(device)
    candidates, skipped = [], []
    for name, prec in dict.fromkeys((*rule.picks, *rule.tune, ("torch", "float32"))):
        reason = available(name, prec)
        if reason is None:
            candidates.append((name, prec))
        else:
            skipped.append(f"{name}/{prec}: {reason}")
    return candidates, skipped


def resolve(path: str | Path | None, device: str = "auto", dtype: str | torch.dtype = "auto", backend: str = "auto",
            task: str | None = None, bucket: str = "overall", use_tuned: bool = True) -> Choice:
    """backend + precision for ``bertrt.load``: explicit choices are checked (a bad one raises
    BackendUnavailable); "auto" takes the winner ``bertrt tune`` stored for this device, model and
    shape bucket when there is a valid one, else the policy table."""
    device = choose_device(device)
    kind = torch.device(device).type
    fixed = None if dtype == "auto" else choose_precision(device, dtype)
    if backend != "auto":
        if backend not in BACKENDS:
            raise BackendUnavailable(f"unknown backend {backend!r}; registered: {sorted(BACKENDS)}")
        precision = fixed or _best_precision_for(backend, device)
        reason = BACKENDS[backend].unavailable(kind, precision)
        if reason:
            raise BackendUnavailable(f"backend {backend!r} cannot run {precision} on {device}: {reason}")
        return Choice(backend, precision, "requested by the caller", "explicit", [(backend, precision)])
    if use_tuned:
        tuned = _tuned_choice(path, device, task, bucket, fixed)
        if tuned is not None:
            return tuned
    return pick(device, precision=fixed)


def _best_precision_for(backend: str, device: str) -> str:
    """The first precision the device's rule lists for ``backend`` that runs here, else the
    hardware default (choose_precision "auto") if the backend runs it, else float32."""
    rule = rule_for(device)
    available = availability_here(device)
    for name, precision in (*rule.picks, *rule.tune):
        if name == backend and precision not in QUANTIZED.values() and available(name, precision) is None:
            return precision
    default = choose_precision(device, "auto")
    return default if available(backend, default) is None else "float32"


def _tuned_choice(path, device: str, task: str | None, bucket: str, fixed: str | None) -> Choice | None:
    try:
        model_dir = _model_dir(path)
        winner = tune_cache.lookup(model_dir, device, task, bucket)
    except Exception as exc:  # a tune cache problem must never stop a load
        log.info("tune cache not consulted: %s", exc)
        return None
    if winner is None:
        return None
    name, precision, detail = winner
    if fixed is not None and precision != fixed:
        log.info("tuned winner %s/%s ignored: dtype %s was requested", name, precision, fixed)
        return None
    reason = availability_here(device)(name, precision)
    if reason:
        log.warning("tuned winner %s/%s cannot run now (%s); using the policy table", name, precision, reason)
        return None
    fallback = pick(device)
    candidates = [(name, precision)] + [c for c in fallback.candidates if c != (name, precision)]
    return Choice(name, precision, f"measured by `bertrt tune`: {detail}", "tuned", candidates)


def _model_dir(path) -> Path:
    if path is None:
        return default_model_dir()
    return Path(path)


def checkpoint_placement(choice: Choice, device: str) -> tuple[torch.dtype, str]:
    """(dtype, device) to load the checkpoint with for ``choice``: torch runs the checkpoint's own
    tensors; the graph backends export from fp32 weights on the CPU and keep the GPU for their engine."""
    if choice.backend == "torch":
        return DTYPES[choice.precision], device
    return torch.float32, "cpu"
