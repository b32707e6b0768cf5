"""The optional ``openvino`` backend (CPU): our standard-op ONNX graph compiled by OpenVINO.

float32 reads the fp32 graph with f32 inference precision; bfloat16 asks OpenVINO for bf16 math
(only on CPUs with native BF16: AMX or AVX512-BF16); int8 reads the QDQ graph, which OpenVINO's
low-precision transformations turn into int8 kernels.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from .. import hardware
from ..batching import PackedBatch
from . import onnx_export
from .base import Backend, BackendUnavailable
from .onnx_export import repack

log = logging.getLogger("bertrt.runtime")

PRECISIONS = ("float32", "bfloat16", "int8")


def available() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "openvino not installed (optional: pip install openvino)"
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return "the ONNX export needs onnx and onnxruntime (pip install onnx onnxruntime)"
    return None


def supports(device: str, precision: str) -> str | None:
    if device != "cpu":
        return "bertrt runs OpenVINO on the CPU only"
    if precision not in PRECISIONS:
        return f"openvino runs {PRECISIONS}, not {precision}"
    if precision == "bfloat16":
        if not hardware.cpu().native_bf16:
            return "bf16 needs AMX or AVX512-BF16 on this CPU"
    return None


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, checkpoint, device: str, precision: str, threads: int | None = None, **_ignored):
        reason = available() or supports(torch.device(device).type, precision)
        if reason:
            raise BackendUnavailable(f"openvino cannot run {precision} on {device}: {reason}")
        import openvino as ov  # optional dependency (bertrt[openvino])

        self.core = ov.Core()
        self.checkpoint = checkpoint
        self.precision = precision
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                       "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.compiled: dict[str, object] = {}
        self.model(checkpoint.config.task)

    def model(self, task: str):
        if task not in self.compiled:
            variant = "int8" if self.precision == "int8" else "fp32"
            path = onnx_export.cached_onnx(self.checkpoint, task, variant)
            self.compiled[task] = self.core.compile_model(str(path), "CPU", self.config)
            log.info("openvino compiled %s/%s", task, self.precision)
        return self.compiled[task]

    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        if task != "embed" and task != self.checkpoint.config.task:
            raise ValueError(f"this {self.checkpoint.config.architecture} checkpoint has no head for task {task!r}")
        compiled = self.model(task)
        ids, mask, types = batch.padded(self.checkpoint.config.pad_token_id)
        result = compiled({"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                           "token_type_ids": types.numpy()})
        out = torch.from_numpy(result[compiled.output(0)].copy()).float()
        return repack(out, mask, task)


BACKEND = Backend("openvino", ("cpu",), PRECISIONS, available, OpenVinoRunner, supports)
