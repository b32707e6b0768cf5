"""The ``tensorrt`` backend: a TensorRT 10 engine built from our standard-op ONNX graph.

Unverified on a GPU: this module is written against the TensorRT 10 Python API (``trt.Builder``,
``OnnxParser``, optimization profiles, ``execute_async_v3``) and has not been run here (no GPU, no
TensorRT wheel on the development machines). ``available()`` says why it cannot run.

* Shapes: one optimization profile per engine, min/opt/max over (batch, sequence) for all three
  inputs; batches larger than the profile's max batch run in slices.
* Precision: float32 (TF32 off), float16 and bfloat16 (builder flags; LayerNormalization kept
  in fp32), int8 and fp8 (explicit quantization: the QDQ graphs from ``onnx_export``; fp8 needs
  sm89+).
* Engine cache: cache_dir()/tensorrt/<key>.plan with a JSON sidecar (checksum, versions); the key
  hashes GPU name, compute capability, TensorRT version, model hash, task, precision and profile,
  so a new GPU, driver-side TensorRT upgrade or model change builds a new engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..batching import PackedBatch
from . import cache, onnx_export
from .base import Backend, BackendUnavailable
from .onnx_export import output_width, repack

log = logging.getLogger("bertrt.runtime")

PRECISIONS = ("float32", "float16", "bfloat16", "int8", "fp8")
# minimum compute capability per precision (int8 tensor cores from Turing, bf16 from Ampere, fp8 from Ada)
MIN_SM = {"float32": 0, "float16": 70, "bfloat16": 80, "int8": 75, "fp8": 89}
ONNX_VARIANT = {"float32": "fp32", "float16": "fp32", "bfloat16": "fp32", "int8": "int8", "fp8": "fp8"}


def available() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not installed (pip install tensorrt)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return "the ONNX export needs onnx and onnxruntime (pip install onnx onnxruntime)"
    return None


def supports(device: str, precision: str, capability: tuple[int, int] | None = None) -> str | None:
    if device != "cuda":
        return "TensorRT runs on CUDA GPUs only"
    if precision not in PRECISIONS:
        return f"tensorrt runs {PRECISIONS}, not {precision}"
    if capability is None:
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    sm = capability[0] * 10 + capability[1]
    if sm < MIN_SM[precision]:
        return f"{precision} needs compute capability >= {MIN_SM[precision] / 10:.1f}, this GPU is sm{sm}"
    return None


@dataclass(frozen=True)
class Profile:
    """(batch, sequence) bounds of the engine's optimization profile."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    min_seq: int = 1
    opt_seq: int = 128
    max_seq: int = 512

    def clamp(self, max_positions: int) -> Profile:
        max_seq = min(self.max_seq, max_positions)
        return Profile(self.min_batch, self.opt_batch, self.max_batch, self.min_seq, min(self.opt_seq, max_seq),
                       max_seq)


def engine_key(gpu_name: str, capability: tuple[int, int], trt_version: str, model_digest: str, task: str,
               precision: str, profile: Profile) -> str:
    """Cache key of one engine: everything an engine plan is only valid for."""
    fields = {"gpu": gpu_name, "sm": list(capability), "tensorrt": trt_version, "model": model_digest,
              "task": task, "precision": precision, "profile": asdict(profile)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def build_engine(onnx_path: Path, precision: str, profile: Profile, workspace_gib: float = 4.0) -> bytes:
    """Parse the ONNX graph and build a serialized engine (unverified on a GPU)."""
    import tensorrt as trt  # optional dependency (bertrt[tensorrt])

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "float32":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif precision == "bfloat16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:
        config.set_flag(trt.BuilderFlag.FP16)  # fp16 itself, and the fallback for unquantized layers
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if precision == "fp8":
        config.set_flag(trt.BuilderFlag.FP8)
    if precision in ("float16", "bfloat16", "int8", "fp8"):
        # LayerNorm's variance overflows in fp16 on large activations: keep normalization layers fp32
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
    shapes = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        shapes.set_shape(name, (profile.min_batch, profile.min_seq), (profile.opt_batch, profile.opt_seq),
                         (profile.max_batch, profile.max_seq))
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    return bytes(plan)


def cached_engine(checkpoint, task: str, precision: str, profile: Profile) -> Path:
    """The engine plan for (GPU, TensorRT version, model, task, precision, profile); built when
    missing, corrupt or stale."""
    import tensorrt as trt  # optional dependency (bertrt[tensorrt])

    capability = torch.cuda.get_device_capability()
    gpu_name = torch.cuda.get_device_name()
    digest = cache.model_hash(checkpoint.model_dir)
    key = engine_key(gpu_name, capability, trt.__version__, digest, task, precision, profile)
    path = cache.cache_dir() / "tensorrt" / f"{key}.plan"
    expect = {"key": key, "tensorrt": trt.__version__, "gpu": gpu_name}
    if cache.verified_artifact(path, expect) is not None:
        return path
    onnx_path = onnx_export.cached_onnx(checkpoint, task, ONNX_VARIANT[precision])
    log.info("building a TensorRT %s engine for %s (%s); this takes a while once", precision, task, gpu_name)
    plan = build_engine(onnx_path, precision, profile)
    cache.write_artifact(path, plan, {**expect, "sm": list(capability), "model_hash": digest, "task": task,
                                      "precision": precision, "profile": asdict(profile)})
    return path


class TensorRtRunner:
    """run(batch, task) on a deserialized engine with torch-allocated CUDA buffers (unverified on a GPU)."""

    name = "tensorrt"

    def __init__(self, checkpoint, device: str, precision: str, profile: Profile | None = None, **_ignored):
        reason = available() or supports(torch.device(device).type, precision)
        if reason:
            raise BackendUnavailable(f"tensorrt cannot run {precision} on {device}: {reason}")
        import tensorrt as trt  # optional dependency (bertrt[tensorrt])

        self.trt = trt
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.precision = precision
        self.profile = (profile or Profile()).clamp(checkpoint.config.max_position_embeddings)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines: dict[str, tuple[object, object]] = {}
        self.engine(checkpoint.config.task)

    def engine(self, task: str):
        if task not in self.engines:
            with torch.cuda.device(self.device):
                path = cached_engine(self.checkpoint, task, self.precision, self.profile)
                engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise RuntimeError(f"TensorRT could not deserialize {path}")
                self.engines[task] = (engine, engine.create_execution_context())
        return self.engines[task]

    @torch.inference_mode()
    def run(self, batch: PackedBatch, task: str) -> torch.Tensor:
        if task != "embed" and task != self.checkpoint.config.task:
            raise ValueError(f"this {self.checkpoint.config.architecture} checkpoint has no head for task {task!r}")
        ids, mask, types = batch.padded(self.checkpoint.config.pad_token_id)
        pieces = []
        step = self.profile.max_batch
        for start in range(0, ids.shape[0], step):
            rows = slice(start, start + step)
            pieces.append(self._execute(task, ids[rows], mask[rows], types[rows]))
        return repack(torch.cat(pieces), mask, task)

    def _execute(self, task, ids, mask, types) -> torch.Tensor:
        engine, context = self.engine(task)
        stream = torch.cuda.current_stream(self.device)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        keep = []
        for name, tensor in inputs.items():
            tensor = tensor.to(self.device, non_blocking=True).contiguous()
            keep.append(tensor)
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        out_name = onnx_export.output_name(task)
        batch, seq_len = ids.shape
        width = output_width(self.checkpoint.config, task)
        shape = (batch, width) if task in ("embed", "classify") else (batch, seq_len, width)
        output = torch.empty(shape, dtype=torch.float32, device=self.device)
        context.set_tensor_address(out_name, output.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return output


BACKEND = Backend("tensorrt", ("cuda",), PRECISIONS, available, TensorRtRunner, supports)
