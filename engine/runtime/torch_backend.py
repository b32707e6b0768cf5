"""The ``torch`` backend: bertrt's own encoder (engine/model) and op kernels, in float32, bfloat16
or float16, on the CPU or a CUDA GPU."""

from __future__ import annotations

import torch

from ..batching import PackedBatch
from ..ops.plan import KernelPlan, model_shape_of, plan_for, validate_kernels
from .base import DTYPES, Backend

# The runner options only torch takes (``create_runner`` gives the graph backends the others).
TORCH_OPTIONS = ("kernels", "batch_invariant")


class TorchRunner:
    """bertrt's own encoder (engine/model) running the kernel plan built for it at creation
    (``bertrt.ops.plan.plan_for``: measured on this machine when ``kernels="auto"``)."""

    name = "torch"

    def __init__(self, checkpoint, device: str, precision: str, kernels: str = "auto", batch_invariant: bool = False):
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


def available() -> str | None:
    return None


BACKEND = Backend("torch", ("cpu", "cuda"), ("float32", "bfloat16", "float16"), available, TorchRunner)
