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
from ..ops.plan import KernelPlan, model_shape_of, plan_for, validate_kernels

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
    """bertrt's own encoder (engine/model) running the kernel plan built for it at creation
    (``bertrt.ops.plan.plan_for``: measured on this machine when ``kernels="auto"``)."""

    name = "torch"

    def __init__(self, checkpoint, device: str, precision: str, kernels: str = "auto", batch_invariant: bool = False):
        from .policy import DTYPES

        validate_kernels(kernels)
        self.device = torch.device(device)
        # a fallback may get a checkpoint loaded for another backend (fp32, on the CPU): match it
        self.model = checkpoint.model.to(device=self.device, dtype=DTYPES[precision])
        self.kernels, self.batch_invariant = kernels, batch_invariant
        self.plan = self._build_plan(precision)

    def _build_plan(self, precision: str) -> KernelPlan:
        quantized = any(hasattr(m, "forward_activation") for m in self.model.modules())
        plan = plan_for(str(self.device), precision, self.kernels, model_shape_of(self.model.config),
                        self.batch_invariant, quantized=quantized)
        self.model.encoder.plan = plan  # the encoder reads it; the plan itself never changes
        return plan

    def replan(self, precision: str) -> KernelPlan:
        """A new plan after the model changed under the runner (``quantize_`` on an engine)."""
        self.plan = self._build_plan(precision)
        return self.plan

    @torch.inference_mode()
    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        batch = batch.to(self.device)
        return self.model.forward_packed(batch.input_ids, batch.cu_seqlens, batch.max_seqlen,
                                         batch.token_type_ids, task=task)


TORCH_OPTIONS = ("kernels", "batch_invariant")


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
                # torch takes only its kernel plan options; the graph backends ignore options they do not know
                own = ({k: v for k, v in options.items() if k in TORCH_OPTIONS} if name == "torch"
                       else {k: v for k, v in options.items() if k not in TORCH_OPTIONS})
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
