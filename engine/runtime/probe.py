"""What this machine offers: its hardware (``bertrt.hardware``), and which backends, kernels and
automatic picks run on it (``report``, printed by ``bertrt info``)."""

from __future__ import annotations

import platform

import torch

from ..hardware import (  # noqa: F401  (re-exported: the probe's public names)
    CPU_FEATURES,
    CpuInfo,
    GpuInfo,
    cpu,
    driver_version,
    fingerprint,
    gpus,
    package_version,
    read_cpu,
    read_gpus,
)
from ..ops import OPS, availability
from . import memory, policy
from .backends import BACKENDS


def report() -> dict:
    """Everything ``bertrt info`` prints, as a JSON-able dict."""
    c = cpu()
    return {
        "cpu": {"model": c.model, "cores": c.cores, "isa": c.isa, "features": sorted(c.flags),
                "native_bf16": c.native_bf16, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "gpus": [{"index": g.index, "name": g.name, "capability": f"{g.capability[0]}.{g.capability[1]}",
                  "memory_gib": round(g.memory_gib, 1)} for g in gpus()],
        "backends": {name: (b.available() or "available") for name, b in BACKENDS.items()},
        "kernels": {op: {impl: reason or "available" for impl, reason in availability(op).items()} for op in OPS},
        "auto": would_pick(),
        "malloc": memory.state(),
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     **{name: package_version(name) for name in ("onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt",
                                                                 "openvino") if package_version(name)}},
    }


def would_pick(model_dir=None) -> dict:
    """What ``bertrt.load(backend="auto", dtype="auto")`` would run on each device, and why: the
    stored ``bertrt tune`` winner for the model (default: the bundled one) when there is one, else
    the policy table's row for the device."""
    devices = ["cpu"] + [f"cuda:{g.index}" for g in gpus()]
    picks = {}
    for device in devices:
        try:
            choice = policy.resolve(model_dir, device, "auto", "auto")
            picks[device] = choice.as_dict()
        except Exception as exc:  # info must print whatever is broken
            picks[device] = {"error": f"{type(exc).__name__}: {exc}"}
    return picks
