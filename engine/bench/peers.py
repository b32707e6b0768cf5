"""The engines a bench compares: bertrt itself and its peers.

Every subject has ``available() -> reason | None``, ``prepare(ctx)`` (load, export, compile: not
timed), ``run(inputs)`` (the timed call) and ``embed(inputs, output) -> (batch, hidden) fp32`` (the
pooled sentence embedding, for fidelity). bertrt gets the padding-free packed batch; peers get the
padded tensors, as their callers would give them. Peers return the last hidden state; pooling
happens outside the timed call (it is a few microseconds).

ONNX export: the transformers model is traced with a *padded* attention mask turned into the
classic additive (batch, 1, 1, len) mask, with attention written as matmul / sqrt(d) + mask ->
softmax -> matmul, the pattern ONNX Runtime's BERT optimizer fuses into its ``Attention`` op. Every
exported, optimized and quantized model is checked on a padded batch against transformers run on
each sequence alone (real tokens only), and cached under ``<cache>/onnx/<key>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BertrtError
from ..model.heads import PoolingConfig, pool
from .names import INT8_PRECISIONS, PEER_NAMES
from .shapes import BenchInputs

__all__ = ["PEER_NAMES", "BenchError", "Context", "Subject", "make_peer"]
EXPORT_VERSION = "1"  # bump when the export recipe changes, to invalidate cached models
# Max |difference| on real tokens between an exported FP32 model and transformers
EXPORT_ATOL = 1e-3


class BenchError(BertrtError):
    """A peer could not be prepared, or its output failed a check."""


@dataclass
class Context:
    model_dir: Path
    threads: int
    cache_dir: Path
    pooling: PoolingConfig
    num_heads: int
    hidden_size: int
    log: Any = print
    device: str = "cpu"
    artifacts: dict = field(default_factory=dict)  # shared between subjects (exported ONNX files)


def missing(*modules: str) -> str | None:
    """None when all modules import, else "pip install ..." naming the first missing one."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{name} is not installed (pip install 'bertrt[bench]')"
    return None


def version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def on_device(inputs: BenchInputs, device: str) -> BenchInputs:
    """``inputs`` with its tensors on ``device`` (made once per batch, so no copy is timed)."""
    if device == "cpu":
        return inputs
    cache = inputs.__dict__.setdefault("_on_device", {})
    if device not in cache:
        cache[device] = dataclasses.replace(
            inputs, packed=inputs.packed.to(device), input_ids=inputs.input_ids.to(device),
            attention_mask=inputs.attention_mask.to(device), token_type_ids=inputs.token_type_ids.to(device))
    return cache[device]


def pool_padded(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: PoolingConfig) -> torch.Tensor:
    """(batch, len, hidden) padded hidden states -> pooled (batch, hidden) fp32, real tokens only."""
    hidden, attention_mask = hidden.cpu(), attention_mask.cpu()
    valid = attention_mask.bool()
    lengths = valid.sum(1).to(torch.int32)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return pool(hidden.float()[valid], cu, pooling)


class Subject:
    engine = ""
    precision = ""
    ours = False
    requires: tuple[str, ...] = ()

    def __init__(self):
        self.notes: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"

    def available(self) -> str | None:
        return missing(*self.requires)

    def prepare(self, ctx: Context) -> None:
        raise NotImplementedError

    def run(self, inputs: BenchInputs):
        raise NotImplementedError

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- bertrt ----------------------------------------------------------------------------------------


class Bertrt(Subject):
    """``engine.runner.run(packed_batch, "embed")``: the backend call on a pre-tokenized packed batch."""

    engine = "bertrt"
    ours = True
    DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "float32", "int8a7": "float32", "fp16": "float16"}

    def __init__(self, precision: str, kernels: str = "auto"):
        super().__init__()
        if precision not in self.DTYPES:
            raise ValueError(f"bertrt precision must be one of {sorted(self.DTYPES)}, got {precision!r}")
        self.precision = precision
        self.kernels = kernels
        self.model = None

    def available(self) -> str | None:
        if self.precision in INT8_PRECISIONS:
            try:
                from ..quant.api import quantize_  # noqa: F401
                from ..quant.configs import Int8DynamicConfig  # noqa: F401
            except Exception as exc:
                return f"bertrt.quant is unavailable: {exc}"
        return None

    def prepare(self, ctx: Context) -> None:
        import bertrt

        self.device = ctx.device
        self.model = bertrt.load(ctx.model_dir, device=ctx.device, dtype=self.DTYPES[self.precision],
                                 kernels=self.kernels)
        if self.precision in INT8_PRECISIONS:
            from ..quant.api import quantize_
            from ..quant.configs import Int8DynamicConfig

            quantize_(self.model, Int8DynamicConfig(**INT8_PRECISIONS[self.precision]))
        self.notes["backend"] = self.model.backend

    def run(self, inputs: BenchInputs):
        return self.model.runner.run(on_device(inputs, self.device).packed, "embed")

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return output.float().cpu()


class BertrtEndToEnd(Bertrt):
    """``engine.embed(texts)``: tokenization, batching and the run (texts re-tokenize to about the
    same lengths as the token batch, not exactly, so this row has no fidelity)."""

    def __init__(self, precision: str, kernels: str = "auto"):
        super().__init__(precision, kernels)
        self.engine = "bertrt-e2e"

    def run(self, inputs: BenchInputs):
        return self.model.embed(inputs.texts)

    def embed(self, inputs: BenchInputs, output):
        return None


# -- transformers ----------------------------------------------------------------------------------


def _load_transformers(model_dir: Path, dtype: torch.dtype, attn: str = "sdpa"):
    """BertModel without its pooler (bertrt and the ONNX graphs do not compute it either)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the unused pooler weights are reported otherwise
    try:
        try:
            model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn, dtype=dtype,
                                                           add_pooling_layer=False)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn, torch_dtype=dtype,
                                                           add_pooling_layer=False)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval().requires_grad_(False)


class Transformers(Subject):
    """transformers AutoModel, attn_implementation="sdpa", under torch.inference_mode."""

    engine = "transformers"
    requires = ("transformers",)

    def __init__(self, precision: str):
        super().__init__()
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def prepare(self, ctx: Context) -> None:
        self.device = ctx.device
        self.model = _load_transformers(ctx.model_dir, self.dtype).to(ctx.device)
        self.pooling = ctx.pooling

    @torch.inference_mode()
    def run(self, inputs: BenchInputs):
        inputs = on_device(inputs, self.device)
        return self.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                          token_type_ids=inputs.token_type_ids).last_hidden_state

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return pool_padded(output, inputs.attention_mask, self.pooling)


# -- ONNX export (shared by ONNX Runtime and OpenVINO) ------------------------------------------------


def _classic_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """BERT attention as transformers 4.x traced it (Div by sqrt(d), additive mask): the subgraph
    onnxruntime.transformers' FusionAttention recognises."""
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


class _ExportWrapper(torch.nn.Module):
    """(input_ids, attention_mask, token_type_ids) -> last_hidden_state, with the padded 0/1 mask
    made into the additive (batch, 1, 1, len) mask inside the graph, so masking is traced, not folded."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        extended = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return self.model.encoder(hidden, attention_mask=extended).last_hidden_state


def _export_key(model_dir: Path) -> str:
    digest = hashlib.sha1()
    digest.update(str(model_dir.resolve()).encode())
    digest.update((model_dir / "config.json").read_bytes())
    for name in sorted(p.name for p in model_dir.iterdir()):
        if name.endswith((".safetensors", ".bin")):
            stat = (model_dir / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(f"{EXPORT_VERSION}:{version('torch')}:{version('transformers')}:{version('onnxruntime')}".encode())
    return f"{model_dir.name}-{digest.hexdigest()[:12]}"


def _check_batch(vocab: int = 30522) -> dict[str, np.ndarray]:
    """A padded batch of three sequences of different lengths (7, 20, 13 tokens)."""
    gen = torch.Generator().manual_seed(1234)
    lengths = [7, 20, 13]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, min(vocab, 29000), (n,), generator=gen)
        ids[row, 0], ids[row, n - 1] = 101, 102
        mask[row, :n] = 1
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids.numpy())}


def _reference_rows(model, feed) -> list[np.ndarray]:
    """transformers on each sequence alone (no padding at all)."""
    rows = []
    with torch.inference_mode():
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"]):
            n = int(mask.sum())
            x = torch.from_numpy(ids[None, :n])
            rows.append(model(input_ids=x, token_type_ids=torch.zeros_like(x)).last_hidden_state[0].numpy())
    return rows


def _compare(out: np.ndarray, feed, rows: list[np.ndarray]) -> dict[str, float]:
    diffs, cosines = [], []
    for row, ref in enumerate(rows):
        got = out[row, :ref.shape[0]]
        diffs.append(float(np.abs(got - ref).max()))
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-12)
        cosines.append(float(cos.min()))
    return {"max_abs_diff": max(diffs), "min_token_cosine": min(cosines)}


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_models(ctx: Context, int8: bool = False) -> dict:
    """Export + optimize (+ quantize when ``int8``), once per checkpoint, cached on disk; returns
    {"plain": Path, "optimized": Path, "int8": Path, "info": {checks, fused op counts}}."""
    reason = missing("transformers", "onnx", "onnxruntime")
    if reason:
        raise BenchError(reason)
    models = ctx.artifacts.get("onnx")
    if models is None:
        folder = ctx.cache_dir / "onnx" / _export_key(ctx.model_dir)
        paths = {"plain": folder / "model.onnx", "optimized": folder / "model-opt.onnx",
                 "int8": folder / "model-int8.onnx"}
        info_file = folder / "info.json"
        if info_file.exists() and paths["plain"].exists() and paths["optimized"].exists():
            info = json.loads(info_file.read_text())
            ctx.log(f"onnx: cached models in {folder}")
        else:
            info = _build_onnx(ctx, folder, paths)
            info_file.write_text(json.dumps(info, indent=2))
        models = ctx.artifacts["onnx"] = {**paths, "info": info, "info_file": info_file}
    if int8 and not (models["int8"].exists() and "int8_check" in models["info"]):
        _quantize_onnx(ctx, models)
        models["info_file"].write_text(json.dumps(models["info"], indent=2))
    return models


def _build_onnx(ctx: Context, folder: Path, paths: dict[str, Path]) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model = _load_transformers(ctx.model_dir, torch.float32, attn="eager")
    feed = _check_batch(model.config.vocab_size)
    rows = _reference_rows(model, feed)
    try:
        from transformers import AttentionInterface

        AttentionInterface.register("bertrt_classic", _classic_attention)
        model.config._attn_implementation = "bertrt_classic"
    except ImportError:  # older transformers: eager attention already traces as the classic pattern
        pass
    ctx.log(f"onnx: exporting {ctx.model_dir.name} (padded mask, dynamic batch and length)")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.from_numpy(feed[n]) for n in names)
    export_kwargs = dict(input_names=names, output_names=["last_hidden_state"],
                         dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
                         opset_version=17)
    wrapper = _ExportWrapper(model).eval()  # eval: export restores the wrapper's mode onto the model
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated; tracer warnings are about head_dim becoming a constant
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(wrapper, example, str(paths["plain"]), dynamo=False, **export_kwargs)
        except TypeError:  # torch without the dynamo argument
            torch.onnx.export(wrapper, example, str(paths["plain"]), **export_kwargs)
    info: dict[str, Any] = {"export": "torch.onnx.export (TorchScript tracer), opset 17, padded additive mask",
                            "check": "padded batch of lengths 7/20/13 vs transformers on each sequence alone"}
    plain = _compare(_ort_session(paths["plain"], ctx.threads).run(None, feed)[0], feed, rows)
    info["plain_check"] = plain
    if plain["max_abs_diff"] > EXPORT_ATOL:
        raise BenchError(f"exported ONNX model differs from transformers on real tokens of a padded batch "
                         f"(max |diff| {plain['max_abs_diff']:.3g} > {EXPORT_ATOL}): masking did not survive export")
    ctx.log("onnx: optimizing (onnxruntime.transformers.optimizer, model_type=bert)")
    optimized = optimize_model(str(paths["plain"]), model_type="bert", num_heads=ctx.num_heads,
                               hidden_size=ctx.hidden_size, opt_level=0)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(paths["optimized"]))
    info["fused_ops"] = stats
    layers = model.config.num_hidden_layers
    if stats.get("Attention", 0) != layers:
        info["fusion_warning"] = f"Attention fused {stats.get('Attention', 0)} of {layers} layers"
        ctx.log(f"onnx: warning: {info['fusion_warning']}")
    opt_check = _compare(_ort_session(paths["optimized"], ctx.threads).run(None, feed)[0], feed, rows)
    info["optimized_check"] = opt_check
    if opt_check["max_abs_diff"] > EXPORT_ATOL:
        raise BenchError(f"optimized ONNX model differs from transformers (max |diff| "
                         f"{opt_check['max_abs_diff']:.3g} > {EXPORT_ATOL})")
    ctx.log(f"onnx: fused {stats}; max |diff| on real tokens: plain {plain['max_abs_diff']:.2g}, "
            f"optimized {opt_check['max_abs_diff']:.2g}")
    return info


def _quantize_onnx(ctx: Context, models: dict) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ctx.log("onnx: dynamic INT8 (quantize_dynamic, per-channel QInt8 weights)")
    quantize_dynamic(str(models["optimized"]), str(models["int8"]), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    feed = _check_batch()
    rows = _reference_rows(_load_transformers(ctx.model_dir, torch.float32), feed)
    info = models["info"]
    info["int8"] = "quantize_dynamic(weight_type=QInt8, per_channel=True) of the optimized model"
    info["int8_check"] = _compare(_ort_session(models["int8"], ctx.threads).run(None, feed)[0], feed, rows)


# -- ONNX Runtime ----------------------------------------------------------------------------------


class OnnxRuntime(Subject):
    """ONNX Runtime CPUExecutionProvider; fp32 = the transformers-optimizer model (fused Attention,
    SkipLayerNorm, BiasGelu, EmbedLayerNorm), int8 = its dynamic quantization."""

    engine = "onnxruntime"
    requires = ("onnxruntime", "onnx", "transformers")

    def __init__(self, precision: str):
        super().__init__()
        self.precision = precision

    def prepare(self, ctx: Context) -> None:
        key = {"fp32": "optimized", "int8": "int8"}[self.precision]
        models = onnx_models(ctx, int8=key == "int8")
        self.session = _ort_session(models[key], ctx.threads)
        self.pooling = ctx.pooling
        self.notes["fused_ops"] = models["info"].get("fused_ops")
        self.notes["check"] = models["info"].get(f"{key}_check")

    def run(self, inputs: BenchInputs):
        return self.session.run(None, inputs.feed())[0]

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return pool_padded(torch.from_numpy(output), inputs.attention_mask, self.pooling)


# -- OpenVINO --------------------------------------------------------------------------------------


class OpenVino(Subject):
    """OpenVINO CPU plugin, converted from the plain ONNX export, compiled with the default precision
    hint (f32 on AVX2, bf16 where the CPU has AMX/AVX512-BF16) and INFERENCE_NUM_THREADS fixed."""

    engine = "openvino"
    requires = ("openvino", "onnx", "onnxruntime", "transformers")

    def __init__(self):
        super().__init__()
        self.precision = "default"

    def prepare(self, ctx: Context) -> None:
        import openvino as ov

        models = onnx_models(ctx)
        core = ov.Core()
        model = ov.convert_model(str(models["plain"]))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": ctx.threads})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = f"default ({getattr(hint, 'name', hint)})".replace("<Type: '", "").replace("'>", "")
        self.notes["performance_hint"] = str(self.compiled.get_property("PERFORMANCE_HINT"))
        self.notes["inference_precision"] = str(hint)
        self.request = self.compiled.create_infer_request()
        self.pooling = ctx.pooling
        feed = _check_batch()
        out = self.request.infer(feed)[0]
        rows = _reference_rows(_load_transformers(ctx.model_dir, torch.float32, attn="sdpa"), feed)
        self.notes["check"] = _compare(np.asarray(out), feed, rows)

    def run(self, inputs: BenchInputs):
        return self.request.infer(inputs.feed())[0]

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return pool_padded(torch.from_numpy(np.array(output)), inputs.attention_mask, self.pooling)


class SentenceTransformers(Subject):
    """sentence-transformers ``SentenceTransformer(model_dir)`` (its own pooling), forward on the padded
    batch; fp16 by ``.half()``. Mostly a GPU peer: it is what many embedding services run."""

    engine = "sentence-transformers"
    requires = ("sentence_transformers",)

    def __init__(self, precision: str):
        super().__init__()
        self.precision = precision

    def prepare(self, ctx: Context) -> None:
        from sentence_transformers import SentenceTransformer  # optional: the test extra

        self.device = ctx.device
        self.model = SentenceTransformer(str(ctx.model_dir), device=ctx.device).eval()
        if self.precision == "fp16":
            self.model = self.model.half()

    @torch.inference_mode()
    def run(self, inputs: BenchInputs):
        inputs = on_device(inputs, self.device)
        return self.model({"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
                           "token_type_ids": inputs.token_type_ids})["sentence_embedding"]

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return output.float().cpu()


def make_peer(name: str) -> Subject:
    if name == "transformers-fp32":
        return Transformers("fp32")
    if name == "transformers-bf16":
        return Transformers("bf16")
    if name == "transformers-fp16":
        return Transformers("fp16")
    if name == "sentence-transformers-fp16":
        return SentenceTransformers("fp16")
    if name == "ort-fp32":
        return OnnxRuntime("fp32")
    if name == "ort-int8":
        return OnnxRuntime("int8")
    if name == "openvino":
        return OpenVino()
    raise ValueError(f"unknown peer {name!r}; choose from {PEER_NAMES}")
