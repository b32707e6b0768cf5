"""The backend interface: the types every backend module and the registry share.

A backend turns a ``Checkpoint`` into a ``Runner``: ``runner.run(batch, task)`` takes a PackedBatch
and returns what ``BertModel.forward_packed`` returns for that task. This module imports no other
runtime module: each backend module (``torch_backend``, ``onnxruntime_backend``, ...) builds on it,
and the registry (``backends``) collects them.

Precisions: "float32", "bfloat16", "float16", "int8", "fp8" (``PRECISIONS``); the float ones map
to torch dtypes through ``DTYPES``; the quantized ones keep fp32 weights in the checkpoint and the
backend quantizes its own graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..batching import PackedBatch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
CANONICAL = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
QUANTIZED = {"int8": "int8", "fp8": "fp8", "float8": "fp8"}
PRECISIONS = ("float32", "bfloat16", "float16", "int8", "fp8")


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
