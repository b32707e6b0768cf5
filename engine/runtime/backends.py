"""Inference backends behind one small interface, described by frozen dataclasses in one registry.

A backend turns a ``Checkpoint`` into a ``Runner``: ``runner.run(batch, task)`` takes a PackedBatch
and returns what ``BertModel.forward_packed`` returns for that task.
An explicit bad choice raises ``BackendUnavailable``; ``select_backend(..., "auto")`` falls back in
registry order and logs why each skipped backend was skipped; ``create_runner`` does the same when
creating an automatically chosen runner fails (an ONNX export, a TensorRT build).

Registered: torch (our encoder and kernels), onnxruntime, tensorrt, openvino (optional, CPU).
Precisions: "float32", "bfloat16", "float16", "int8", "fp8" (see ``policy.PRECISIONS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..batching import PackedBatch
from ..ops.registry import KernelUnavailable

log = logging.getLogger("bertrt.runtime")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (the message says why)."""


class Runner(Protocol):
    name: str

    def run(self, batch: PackedBatch, task: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    available: Callable[[], str | None]  # None when usable, else the reason it is not
    create: Callable[..., Runner]  # create(checkpoint, device, precision, **options) -> Runner
    # supports(device, precision) -> None, or why this pair cannot run here (beyond devices/precisions)
    supports: Callable[[str, str], str | None] | None = None

    def unavailable(self, device: str, precision: str) -> str | None:
        """None when this backend can run ``precision`` on ``device`` ("cpu"/"cuda") here, else why not."""
        reason = self.available()
        if reason:
            return reason
        if device not in self.devices:
            return f"runs on {self.devices}, not {device}"
        if precision not in self.precisions:
            return f"runs {self.precisions}, not {precision}"
        return self.supports(device, precision) if self.supports else None


class TorchRunner:
    """bertrt's own encoder (engine/model) with the op kernels chosen by ``kernels``."""

    name = "torch"

    def __init__(self, checkpoint, device: str, precision: str, kernels: str = "auto"):
        from ..model.encoder import KERNEL_CHOICES

        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        from .policy import DTYPES

        self.device = torch.device(device)
        # a fallback may get a checkpoint loaded for another backend (fp32, on the CPU): match it
        self.model = checkpoint.model.to(device=self.device, dtype=DTYPES[precision])
        self.model.plan.impl = kernels
        # GPU GEMMs gain from moving the bias into our fused epilogue kernels; oneDNN fuses it already.
        self.model.plan.defer_bias = self.device.type == "cuda"
        self.model.plan.gemm = _cpu_gemm(self.device, precision, kernels)

    @torch.inference_mode()
    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        batch = batch.to(self.device)
        return self.model.forward_packed(batch.input_ids, batch.cu_seqlens, batch.max_seqlen,
                                         batch.token_type_ids, task=task)


def _cpu_gemm(device: torch.device, precision: str, kernels: str) -> str:
    """"cpu" (bertrt's packed fp32 GEMM with fused epilogues) where it applies and is built, else "torch"
    (oneDNN/MKL through nn.Linear, which also runs the bf16 and fp16 GEMMs)."""
    if device.type != "cpu" or precision != "float32" or kernels not in ("auto", "cpu"):
        return "torch"
    from ..ops.registry import availability

    reason = availability("linear")["cpu"]
    if reason:
        if kernels == "cpu":
            raise KernelUnavailable(f"kernels='cpu' needs the CPU GEMM: {reason}")
        log.info("CPU GEMM unavailable, using torch's: %s", reason)
        return "torch"
    from ..ops import cpu_kernels

    if cpu_kernels.active_isa() == "scalar":
        # the portable build of the GEMM is ~20x slower than MKL/oneDNN: only vector ISAs pay
        log.info("CPU GEMM: no AVX2 on this CPU, using torch's")
        return "torch"
    return "cpu"


def _torch_available() -> str | None:
    return None


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


register(Backend("torch", ("cpu", "cuda"), ("float32", "bfloat16", "float16"), _torch_available, TorchRunner))


def _register_optional() -> None:
    # Each module imports its library lazily, so registering costs nothing when it is absent.
    from . import onnxruntime_backend, openvino_backend, tensorrt_backend

    for module in (onnxruntime_backend, tensorrt_backend, openvino_backend):
        register(module.BACKEND)


_register_optional()

# Preference when backend="auto"; a backend absent from the registry is skipped.
AUTO_ORDER = {"cuda": ("tensorrt", "onnxruntime", "torch"), "cpu": ("torch",)}


def select_backend(device: str, precision: str, override: str = "auto") -> Backend:
    """The backend to run ``precision`` on ``device`` ("cpu"/"cuda")."""
    if override != "auto":
        if override not in BACKENDS:
            raise BackendUnavailable(f"unknown backend {override!r}; registered: {sorted(BACKENDS)}")
        backend = BACKENDS[override]
        reason = backend.available()
        if reason:
            raise BackendUnavailable(f"backend {override!r} is unavailable: {reason}")
        if device not in backend.devices:
            raise BackendUnavailable(f"backend {override!r} does not run on {device} (runs on {backend.devices})")
        if precision not in backend.precisions:
            raise BackendUnavailable(f"backend {override!r} does not run {precision} (runs {backend.precisions})")
        reason = backend.unavailable(device, precision)
        if reason:
            raise BackendUnavailable(f"backend {override!r} cannot run {precision} on {device}: {reason}")
        return backend
    for name in AUTO_ORDER.get(device, ("torch",)):
        backend = BACKENDS.get(name)
        if backend is None:
            continue
        reason = backend.unavailable(device, precision)
        if reason is None:
            return backend
        log.info("backend %s skipped on %s/%s: %s", name, device, precision, reason)
    return BACKENDS["torch"]


def create_runner(checkpoint, device: str, candidates: list[tuple[str, str]], explicit: bool = False,
                  **options) -> tuple[Runner, str, str]:
    """Create the first runner that works among ``candidates`` [(backend, precision), ...] ->
    (runner, backend name, precision).

    explicit: the caller named the backend; its failure raises instead of falling back. Otherwise a
    failing candidate is logged with the reason and the next one is tried; torch in float32 is the
    last resort. ``kernels`` goes to torch only, every other option to the graph backends (each
    ignores what it does not know).
    """
    kind = torch.device(device).type
    tried = list(candidates)
    if not explicit and ("torch", "float32") not in tried:
        tried.append(("torch", "float32"))
    errors = []
    for name, precision in tried:
        backend = BACKENDS.get(name)
        reason = f"unknown backend {name!r}" if backend is None else backend.unavailable(kind, precision)
        if reason is None:
            try:
                # torch takes only its kernel choice; the graph backends ignore options they do not know
                own = ({k: v for k, v in options.items() if k == "kernels"} if name == "torch"
                       else {k: v for k, v in options.items() if k != "kernels"})
                return backend.create(checkpoint, device, precision, **own), name, precision
            except Exception as exc:  # a failed export/build: fall back, saying why
                if explicit:
                    raise
                reason = f"{type(exc).__name__}: {exc}"
        if explicit:
            raise BackendUnavailable(f"backend {name!r} cannot run {precision} on {device}: {reason}")
        errors.append(f"{name}/{precision}: {reason}")
        log.warning("backend %s/%s failed on %s, falling back: %s", name, precision, device, reason)
    raise BackendUnavailable("no backend could run here: " + "; ".join(errors))
