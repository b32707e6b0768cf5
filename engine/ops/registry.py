"""Where each op's implementations live and which of them this machine can run.

Every op has the same implementation names:

* ``ref``    plain PyTorch, fp32 math, the ground truth (``engine/ops/<op>.py``)
* ``torch``  fast PyTorch composition in the input dtype (CPU and CUDA fallback)
* ``cpu``    C++ kernels in ``bertrt._C`` (``csrc/cpu``), glue in ``engine/ops/cpu_kernels.py``
* ``cuda``   CUDA C++ kernels in ``bertrt._cuda`` (``csrc/cuda``), glue in ``engine/ops/cuda_kernels.py``
* ``triton`` Triton kernels in ``bertrt.kernels.<op>`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)

``cpu:<isa>`` names the C++ kernels of one ISA variant (``cpu:avx2``, ``cpu:avx512``, ...): what the
kernel plan (``bertrt.ops.plan``) writes once it has checked and timed each variant on this machine.
Extra candidates (a plug-in kernel, or the deliberately slow or broken ones the dispatch tests use)
join with ``register_candidate``.

An explicit request for an implementation that cannot run raises ``KernelUnavailable`` with the
reason; ``auto`` walks a preference list and takes the first that can.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import limit_violation

IMPLEMENTATIONS = ("ref", "torch", "cpu", "cuda", "triton")


class KernelUnavailable(RuntimeError):
    """The requested kernel implementation cannot run here; the message says why."""


@dataclass(frozen=True)
class KernelSource:
    """Where the function for one (op, implementation) pair is imported from."""

    module: str
    attribute: str
    devices: tuple[str, ...]


# (op, name) -> (function, devices): candidates registered at run time (see register_candidate)
_EXTRA: dict[tuple[str, str], tuple[Callable, tuple[str, ...]]] = {}


def register_candidate(op: str, name: str, fn: Callable, devices: tuple[str, ...] = ("cpu",)) -> None:
    """Offer ``fn`` (the signature of ``<op>_ref``) as implementation ``name`` of ``op``: the kernel
    plan self-checks and times it like the built-in ones. ``unregister_candidate`` removes it."""
    if name in IMPLEMENTATIONS or name.startswith("cpu:"):
        raise ValueError(f"{name!r} is a built-in implementation name")
    _EXTRA[(op, name)] = (fn, tuple(devices))


def unregister_candidate(op: str, name: str) -> None:
    _EXTRA.pop((op, name), None)


def extra_candidates(op: str, device_type: str) -> list[str]:
    return [name for (o, name), (_, devices) in _EXTRA.items() if o == op and device_type in devices]


def _source(op: str, impl: str) -> KernelSource:
    if impl == "cpu" or impl.startswith("cpu:"):
        return KernelSource("bertrt.ops.cpu_kernels", op, ("cpu",))
    if impl == "cuda":
        return KernelSource("bertrt.ops.cuda_kernels", op, ("cuda",))
    if impl == "triton":
        return KernelSource(f"bertrt.kernels.{op}", op, ("cuda", "cpu"))
    if impl in ("ref", "torch"):
        return KernelSource(f"bertrt.ops.{op}", f"{op}_{impl}", ("cpu", "cuda"))
    raise ValueError(f"unknown kernel implementation {impl!r}; choose one of {IMPLEMENTATIONS}")


def _precondition(impl: str) -> str | None:
    """Return why ``impl`` cannot run on this machine at all, or None."""
    if impl == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
    if impl == "triton":
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            return "no CUDA device, and TRITON_INTERPRET=1 is not set (the CPU interpreter is for tests)"
    return None


@functools.cache
def _load(op: str, impl: str) -> Callable | str:
    source = _source(op, impl)
    reason = _precondition(impl)
    if reason:
        return reason
    try:
        module = importlib.import_module(source.module)
    except Exception as exc:  # an unbuilt extension or a missing package: report, do not crash
        return f"{source.module} could not be imported: {exc}"
    fn = getattr(module, source.attribute, None)
    if fn is None:
        return f"{source.module} has no {source.attribute}"
    return fn


@functools.cache
def _load_isa(op: str, isa: str) -> Callable | str:
    """The cpu kernel of ``op`` pinned to ISA variant ``isa`` (whatever ``use_isa`` says around it)."""
    found = _load(op, "cpu")
    if isinstance(found, str):
        return found
    cpu_kernels = importlib.import_module("bertrt.ops.cpu_kernels")
    if isa not in cpu_kernels.supported_isas():
        return f"this CPU cannot run the {isa} variant (runs {cpu_kernels.supported_isas()})"

    def pinned(*args, **kwargs):
        with cpu_kernels.use_isa(isa):
            return found(*args, **kwargs)

    pinned.__name__ = f"{op}_cpu_{isa}"
    return pinned


def _find(op: str, impl: str) -> Callable | str:
    if impl.startswith("cpu:"):
        return _load_isa(op, impl.split(":", 1)[1])
    if (op, impl) in _EXTRA:
        return _EXTRA[(op, impl)][0]
    return _load(op, impl)


def resolve(op: str, impl: str) -> Callable:
    """Return the function implementing ``op`` with ``impl``, or raise KernelUnavailable."""
    found = _find(op, impl)
    if isinstance(found, str):
        raise KernelUnavailable(f"{op}: implementation {impl!r} is unavailable: {found}")
    return found


def limit_reason(op: str, impl: str, **dims: int) -> str | None:
    """Why ``impl`` of ``op`` cannot run a model of these dims (head_dim=...), from the ``LIMITS`` its
    glue module declares ({op: {dim: max}}), or None. The kernel plan reports it as the reason."""
    if (op, impl) in _EXTRA or impl in ("ref", "torch"):
        return None
    try:
        module = importlib.import_module(_source(op, impl).module)
    except Exception:  # unavailable: availability() says why
        return None
    limits = getattr(module, "LIMITS", {}).get(op, {})
    return limit_violation(impl, limits, **dims)


def availability(op: str) -> dict[str, str | None]:
    """Map each implementation name to None (runs here) or the reason it does not."""
    result = {}
    for impl in IMPLEMENTATIONS:
        found = _load(op, impl)
        result[impl] = found if isinstance(found, str) else None
    return result


# Order tried by impl="auto"; the model layer may pass an explicit order (e.g. kernels="triton").
AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


def pick(op: str, device_type: str, impl: str = "auto") -> Callable:
    """The function for ``op`` on ``device_type`` ("cpu"/"cuda"): explicit ``impl`` or the best one."""
    if impl != "auto":
        if (op, impl) in _EXTRA:
            return _EXTRA[(op, impl)][0]
        source = _source(op, impl)
        if device_type not in source.devices:
            raise KernelUnavailable(f"{op}: implementation {impl!r} does not run on {device_type}")
        return resolve(op, impl)
    for candidate in AUTO_ORDER.get(device_type, ("torch",)):
        found = _load(op, candidate)
        if not isinstance(found, str):
            return found
    return resolve(op, "torch")
