"""The ``onnxruntime`` backend: our exported graph in an ONNX Runtime session.

Execution providers, in order: TensorRT -> CUDA -> CPU (those this onnxruntime build has).
* TensorRT EP: reads the standard-op graph (fp32, or int8 QDQ) and builds its own engine with
  FP16 / INT8 enabled per precision; engines are cached under cache_dir()/ort-trt.
* CUDA EP: the graph fused by the transformers optimizer for GPU (fp32 or fp16 weights).
* CPU EP: the fused fp32 graph, or the int8 QDQ graph (ORT folds the Q/DQ pairs into integer
  MatMuls at session creation).
On GPU, inputs and outputs are bound to torch CUDA tensors with IOBinding (no host round trip).
The GPU paths (CUDA EP, TensorRT EP, IOBinding) are unverified on a GPU.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import torch

from ..batching import PackedBatch
from . import onnx_export
from .base import Backend, BackendUnavailable
from .cache import cache_dir
from .onnx_export import output_width, repack

log = logging.getLogger("bertrt.runtime")

PRECISIONS = ("float32", "float16", "int8")
EP_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def available() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
    if importlib.util.find_spec("onnx") is None:
        return "onnx not installed (needed to export the graph; pip install onnx)"
    return None


def supports(device: str, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` with the onnxruntime installed here, or None."""
    if precision not in PRECISIONS:
        return f"onnxruntime runs {PRECISIONS}, not {precision}"
    if device == "cuda":
        import onnxruntime as ort  # optional dependency (bertrt[onnx])

        gpu_eps = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
        if not gpu_eps:
            return "this onnxruntime has no CUDA or TensorRT execution provider (install onnxruntime-gpu)"
    elif precision == "float16":
        return "fp16 on ONNX Runtime's CPU provider is emulated (slower than fp32)"
    return None


def providers_for(device: str, precision: str, device_id: int = 0) -> list:
    """The execution providers for a session, best first, with their options."""
    import onnxruntime as ort  # optional dependency (bertrt[onnx])

    have = set(ort.get_available_providers())
    if device != "cuda":
        return ["CPUExecutionProvider"]
    chosen: list = []
    if "TensorrtExecutionProvider" in have:
        trt_cache = cache_dir() / "ort-trt"
        trt_cache.mkdir(parents=True, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": device_id,
            "trt_fp16_enable": precision in ("float16", "int8"),
            "trt_int8_enable": precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache),
            "trt_timing_cache_enable": True,
        }))
    if "CUDAExecutionProvider" in have:
        chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
    chosen.append("CPUExecutionProvider")
    return chosen


def variant_for(device: str, precision: str, providers: list) -> str:
    """Which exported graph a session reads: TensorRT EP wants standard ops, the others the fused graph."""
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    if precision == "int8":
        return "int8"
    if names[0] == "TensorrtExecutionProvider":
        return "fp32"  # TensorRT applies fp16 itself and does not know the com.microsoft fused ops
    return "fp16-ort" if precision == "float16" else "fp32-ort"


class OnnxRuntimeRunner:
    """run(batch, task) -> what BertModel.forward_packed returns, computed by an ORT session."""

    name = "onnxruntime"

    def __init__(self, checkpoint, device: str, precision: str, intra_op_threads: int | None = None,
                 providers: list | None = None, **_ignored):
        reason = available() or supports(torch.device(device).type, precision)
        if reason:
            raise BackendUnavailable(f"onnxruntime cannot run {precision} on {device}: {reason}")
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.precision = precision
        self.intra_op_threads = intra_op_threads
        self.providers = providers or providers_for(self.device.type, precision, self.device.index or 0)
        self.sessions: dict[str, object] = {}
        self.session(checkpoint.config.task)  # build now, so that a failure surfaces at load time

    def session(self, task: str):
        if task not in self.sessions:
            import onnxruntime as ort  # optional dependency (bertrt[onnx])

            variant = variant_for(self.device.type, self.precision, self.providers)
            path = onnx_export.cached_onnx(self.checkpoint, task, variant, use_gpu=self.device.type == "cuda")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.intra_op_threads:
                options.intra_op_num_threads = self.intra_op_threads
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=self.providers)
            log.info("onnxruntime session for %s/%s on %s (graph %s)", task, self.precision,
                     session.get_providers()[0], variant)
            self.sessions[task] = session
        return self.sessions[task]

    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        if task != "embed" and task != self.checkpoint.config.task:
            raise ValueError(f"this {self.checkpoint.config.architecture} checkpoint has no head for task {task!r}")
        session = self.session(task)
        ids, mask, types = batch.padded(self.checkpoint.config.pad_token_id)
        if self.device.type == "cuda":
            out = self._run_iobinding(session, task, ids, mask, types)
        else:
            feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
            out = torch.from_numpy(session.run(None, feeds)[0])
        return repack(out, mask, task)

    def _run_iobinding(self, session, task, ids, mask, types) -> torch.Tensor:
        """Bind torch CUDA tensors as inputs and output: no host copies (unverified on a GPU)."""
        device_id = self.device.index or 0
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        inputs = {k: v.to(self.device).contiguous() for k, v in inputs.items()}
        batch, seq_len = ids.shape
        width = self.checkpoint.config.hidden_size if task == "embed" else output_width(self.checkpoint.config, task)
        shape = (batch, width) if task in ("embed", "classify") else (batch, seq_len, width)
        output = torch.empty(shape, dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        for name, tensor in inputs.items():
            binding.bind_input(name, "cuda", device_id, np.int64, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output(onnx_export.output_name(task), "cuda", device_id, np.float32, shape, output.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs are copied on torch's stream
        session.run_with_iobinding(binding)
        return output


BACKEND = Backend("onnxruntime", ("cpu", "cuda"), PRECISIONS, available, OnnxRuntimeRunner, supports)
