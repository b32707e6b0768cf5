"""The ``torch`` backend: bertrt's own encoder (engine/model) and op kernels, in float32, bfloat16
or float16, on the CPU or a CUDA GPU."""

from __future__ import annotations

import logging

import torch

from ..batching import PackedBatch
from ..model.encoder import KERNEL_CHOICES
from ..ops.registry import KernelUnavailable, availability
from .base import DTYPES, Backend

log = logging.getLogger("bertrt.runtime")


class TorchRunner:
    """bertrt's own encoder (engine/model) with the op kernels chosen by ``kernels``."""

    name = "torch"

    def __init__(self, checkpoint, device: str, precision: str, kernels: str = "auto"):
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
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
    reason = availability("linear")["cpu"]
    if reason:
        if kernels == "cpu":
            raise KernelUnavailable(f"kernels='cpu' needs the CPU GEMM: {reason}")
        log.info("CPU GEMM unavailable, using torch's: %s", reason)
        return "torch"
    from ..ops import cpu_kernels  # imports bertrt._C, an optional build: present once availability says so

    if cpu_kernels.active_isa() == "scalar":
        # the portable build of the GEMM is ~20x slower than MKL/oneDNN: only vector ISAs pay
        log.info("CPU GEMM: no AVX2 on this CPU, using torch's")
        return "torch"
    return "cpu"


def available() -> str | None:
    return None


BACKEND = Backend("torch", ("cpu", "cuda"), ("float32", "bfloat16", "float16"), available, TorchRunner)
