"""The backend registry: every backend module's ``BACKEND``, ``select_backend`` and ``create_runner``.

A backend turns a ``Checkpoint`` into a ``Runner`` (the interface is in ``runtime/base.py``).
An explicit bad choice raises ``BackendUnavailable``; ``select_backend(..., "auto")`` falls back in
registry order and logs why each skipped backend was skipped; ``create_runner`` does the same when
creating an automatically chosen runner fails (an ONNX export, a TensorRT build).

Registered: torch (our encoder and kernels), onnxruntime, tensorrt, openvino (optional, CPU).
Precisions: "float32", "bfloat16", "float16", "int8", "fp8" (see ``base.PRECISIONS``).
"""

from __future__ import annotations

import logging

import torch

from . import onnxruntime_backend, openvino_backend, tensorrt_backend, torch_backend
from .base import Backend, BackendUnavailable, Runner
from .torch_backend import TORCH_OPTIONS, TorchRunner

__all__ = ["AUTO_ORDER", "BACKENDS", "TORCH_OPTIONS", "Backend", "BackendUnavailable", "Runner", "TorchRunner",
           "create_runner",
           "register", "select_backend"]

log = logging.getLogger("bertrt.runtime")

BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> None:
    BACKENDS[backend.name] = backend


# Each optional backend module imports its library lazily, so registering costs nothing when it is absent.
for _module in (torch_backend, onnxruntime_backend, tensorrt_backend, openvino_backend):
    register(_module.BACKEND)

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
