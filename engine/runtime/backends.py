"""Inference backends behind one small interface, described by frozen dataclasses in one registry.

A backend turns a ``Checkpoint`` into a ``Runner``: ``runner.run(batch, task)`` takes a PackedBatch
and returns what ``BertModel.forward_packed`` returns for that task.
An explicit bad choice raises ``BackendUnavailable``; ``select_backend(..., "auto")`` falls back in
registry order and logs why each skipped backend was skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..batching import PackedBatch

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


class TorchRunner:
    """bertrt's own encoder (engine/model) with the op kernels chosen by ``kernels``."""

    name = "torch"

    def __init__(self, checkpoint, device: str, precision: str, kernels: str = "auto"):
        from ..model.encoder import KERNEL_CHOICES

        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        self.model = checkpoint.model
        self.device = torch.device(device)
        self.model.plan.impl = kernels
        # GPU GEMMs gain from moving the bias into our fused epilogue kernels; oneDNN fuses it already.
        self.model.plan.defer_bias = self.device.type == "cuda"

    @torch.inference_mode()
    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        batch = batch.to(self.device)
        return self.model.forward_packed(batch.input_ids, batch.cu_seqlens, batch.max_seqlen,
                                         batch.token_type_ids, task=task)


def _torch_available() -> str | None:
    return None


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


register(Backend("torch", ("cpu", "cuda"), ("float32", "bfloat16", "float16"), _torch_available, TorchRunner))

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
        return backend
    for name in AUTO_ORDER.get(device, ("torch",)):
        backend = BACKENDS.get(name)
        if backend is None:
            continue
        reason = backend.available()
        if reason is None and device in backend.devices and precision in backend.precisions:
            return backend
        log.info("backend %s skipped on %s/%s: %s", name, device, precision,
                 reason or "device or precision not supported")
    return BACKENDS["torch"]
