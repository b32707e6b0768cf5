"""The engines a bench compares: bertrt itself and its peers.

Every subject has ``available() -> reason | None``, ``prepare(ctx)`` (load, export, compile: not
timed), ``run(inputs)`` (the timed call) and ``embed(inputs, output) -> (batch, hidden) fp32`` (the
pooled sentence embedding, for fidelity). bertrt gets the padding-free packed batch; peers get the
padded tensors, as their callers would give them. transformers returns the last hidden state and is
pooled outside the timed call (a few microseconds); the ONNX graphs pool in the graph, as bertrt does.

ONNX graphs: bertrt's one exporter (``bertrt.runtime.onnx_export``: the classic additive-mask BERT
graph ONNX Runtime's optimizer fuses into its ``Attention`` op), from the cache the backends share
(``<cache>/onnx/<model hash>/``). Every plain, optimized and quantized graph is checked on a padded
batch against transformers run on each sequence alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import load
from ..errors import BertrtError
from ..model import load_checkpoint
from ..model.heads import PoolingConfig, pool_padded
from ..quant.api import quantize_
from ..quant.configs import Int8DynamicConfig
from ..runtime import onnx_export
from .names import CALIBRATION_SEED, CALIBRATION_SHAPE, INT8_PRECISIONS, PEER_NAMES
from .shapes import BenchInputs, make_inputs, parse_shapes

__all__ = ["PEER_NAMES", "BenchError", "Context", "Subject", "make_peer"]
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


def quantize_int8(engine, precision: str, model_dir: Path) -> None:
    """Quantize ``engine`` in place to the bench's INT8 ``precision`` (names.INT8_PRECISIONS); SmoothQuant
    calibrates on seeded texts of another seed than the timed inputs."""
    config = Int8DynamicConfig(**INT8_PRECISIONS[precision])
    calibration = None
    if config.smoothquant_alpha is not None:
        spec = parse_shapes(CALIBRATION_SHAPE)[0]
        calibration = make_inputs(spec, Path(model_dir) / "vocab.txt", CALIBRATION_SEED).texts
    quantize_(engine, config, calibration=calibration)


class Bertrt(Subject):
    """``engine.runner.run(packed_batch, "embed")``: the backend call on a pre-tokenized packed batch."""

    engine = "bertrt"
    ours = True
    DTYPES = {"fp32": "float32", "bf16": "bfloat16", "int8": "float32", "int8a7": "float32", "int8a7sq": "float32",
              "fp16": "float16"}

    def __init__(self, precision: str, kernels: str = "auto", labelled: bool = False):
        """labelled: name the kernels in the engine column ("bertrt[kernels=torch]"), for the rows of a
        second kernel setting in the same run."""
        super().__init__()
        if precision not in self.DTYPES:
            raise ValueError(f"bertrt precision must be one of {sorted(self.DTYPES)}, got {precision!r}")
        self.precision = precision
        self.kernels = kernels
        self.model = None
        if labelled:
            self.engine = f"{self.engine}[kernels={kernels}]"

    def prepare(self, ctx: Context) -> None:
        self.device = ctx.device
        self.model = load(ctx.model_dir, device=ctx.device, dtype=self.DTYPES[self.precision],
                                 kernels=self.kernels)
        if self.precision in INT8_PRECISIONS:
            quantize_int8(self.model, self.precision, ctx.model_dir)
        self.notes["backend"] = self.model.backend

    def run(self, inputs: BenchInputs):
        return self.model.runner.run(on_device(inputs, self.device).packed, "embed")

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return output.float().cpu()


class BertrtEndToEnd(Bertrt):
    """``engine.embed(texts)``: tokenization, batching and the run (texts re-tokenize to about the
    same lengths as the token batch, not exactly, so this row has no fidelity)."""

    def __init__(self, precision: str, kernels: str = "auto", labelled: bool = False):
        super().__init__(precision, kernels, labelled)
        self.engine = self.engine.replace("bertrt", "bertrt-e2e", 1)

    def run(self, inputs: BenchInputs):
        return self.model.embed(inputs.texts)

    def embed(self, inputs: BenchInputs, output):
        return None


# -- transformers ----------------------------------------------------------------------------------


def _load_transformers(model_dir: Path, dtype: torch.dtype, attn: str = "sdpa"):
    """The checkpoint's AutoModel (its encoder), without a pooler where the family has one (bertrt
    and the ONNX graphs do not compute it either); eager attention where the family has no SDPA
    (MPNet)."""
    import transformers  # optional dependency (bertrt[bench])

    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "bert")
    extra = {"add_pooling_layer": False} if model_type in POOLER_FAMILIES else {}
    attn = "eager" if model_type in EAGER_ONLY else attn
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the unused pooler weights are reported otherwise
    try:
        try:
            model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn, dtype=dtype, **extra)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation=attn, torch_dtype=dtype,
                                                           **extra)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.eval().requires_grad_(False)


# families whose transformers *Model takes add_pooling_layer; those without an SDPA attention
POOLER_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet")
EAGER_ONLY = ("mpnet",)


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
        # token types default to zeros (BERT) or do not exist (RoBERTa-likes, DistilBERT, ModernBERT)
        return self.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).last_hidden_state

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return pool_padded(output.float(), inputs.attention_mask, self.pooling)


# -- ONNX graphs (shared by ONNX Runtime and OpenVINO) -----------------------------------------------


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


def _reference_rows(model, feed, pooling: PoolingConfig) -> np.ndarray:
    """transformers on each sequence alone (no padding at all), pooled: (batch, hidden) fp32."""
    rows = []
    with torch.inference_mode():
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"]):
            n = int(mask.sum())
            x = torch.from_numpy(ids[None, :n])
            hidden = model(input_ids=x).last_hidden_state.float()
            rows.append(pool_padded(hidden, torch.ones(1, n, dtype=torch.int64), pooling)[0].numpy())
    return np.stack(rows)


def _compare(out: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    out = np.asarray(out, dtype=np.float32)
    cosines = (out * rows).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(rows, axis=-1) + 1e-12)
    return {"max_abs_diff": float(np.abs(out - rows).max()), "min_cosine": float(cosines.min())}


def graph_feed(feed: dict, names: set[str]) -> dict:
    """The padded inputs a graph takes: a family without token types exports no ``token_type_ids``."""
    return {name: value for name, value in feed.items() if name in names}


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort  # optional dependency (bertrt[onnx])

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_models(ctx: Context, int8: bool = False) -> dict:
    """bertrt's own ONNX export of the checkpoint's sentence embedding (``runtime.onnx_export``,
    pooled in the graph), from the cache every backend shares (``<cache dir>/onnx/<model hash>/``):
    {"plain": the standard-op graph, "optimized": ONNX Runtime's fused graph, "int8": its dynamic
    INT8 (when ``int8``), "info": checks and fused-op counts}. Each graph is checked on a padded
    batch against transformers run on each sequence alone."""
    reason = missing("transformers", "onnx", "onnxruntime")
    if reason:
        raise BenchError(reason)
    models = ctx.artifacts.get("onnx")
    if models is None:
        checkpoint = load_checkpoint(ctx.model_dir, torch.float32, "cpu")
        ctx.log(f"onnx: {ctx.model_dir.name} from bertrt's export cache in {ctx.cache_dir / 'onnx'}")
        paths = {"plain": onnx_export.cached_onnx(checkpoint, "embed", "fp32", root=ctx.cache_dir),
                 "optimized": onnx_export.cached_onnx(checkpoint, "embed", "fp32-ort", root=ctx.cache_dir)}
        info: dict[str, Any] = {"export": "bertrt.runtime.onnx_export (TorchScript tracer, opset 17, padded mask, "
                                          "pooled in the graph)",
                                "check": "padded batch of lengths 7/20/13 vs transformers on each sequence alone"}
        feed = _check_batch(checkpoint.config.vocab_size)
        rows = _reference_rows(_load_transformers(ctx.model_dir, torch.float32), feed, ctx.pooling)
        for key in ("plain", "optimized"):
            session = _ort_session(paths[key], ctx.threads)
            names = {i.name for i in session.get_inputs()}
            check = info[f"{key}_check"] = _compare(session.run(None, graph_feed(feed, names))[0], rows)
            if check["max_abs_diff"] > EXPORT_ATOL:
                raise BenchError(f"{key} ONNX graph differs from transformers on a padded batch (max |diff| "
                                 f"{check['max_abs_diff']:.3g} > {EXPORT_ATOL}): masking did not survive export")
        stats = info["fused_ops"] = onnx_export.fused_operators(paths["optimized"])
        layers = checkpoint.config.num_hidden_layers
        if stats.get("Attention", 0) != layers:
            info["fusion_warning"] = f"Attention fused {stats.get('Attention', 0)} of {layers} layers"
            ctx.log(f"onnx: warning: {info['fusion_warning']}")
        ctx.log(f"onnx: fused {stats}; max |diff| vs transformers: plain {info['plain_check']['max_abs_diff']:.2g}, "
                f"optimized {info['optimized_check']['max_abs_diff']:.2g}")
        models = ctx.artifacts["onnx"] = {**paths, "info": info, "checkpoint": checkpoint, "feed": feed,
                                          "rows": rows}
    if int8 and "int8" not in models:
        models["int8"] = onnx_export.cached_onnx(models["checkpoint"], "embed", "int8-dynamic", root=ctx.cache_dir)
        info = models["info"]
        info["int8"] = "quantize_dynamic(weight_type=QInt8, per_channel=True) of the optimized graph"
        session = _ort_session(models["int8"], ctx.threads)
        names = {i.name for i in session.get_inputs()}
        info["int8_check"] = _compare(session.run(None, graph_feed(models["feed"], names))[0],
                                      models["rows"])
    return models


# -- ONNX Runtime ----------------------------------------------------------------------------------


class OnnxRuntime(Subject):
    """ONNX Runtime CPUExecutionProvider on bertrt's ONNX export; fp32 = the graph fused by ORT's
    transformers optimizer (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm), int8 = its dynamic
    quantization. The graph pools in its last nodes, as bertrt's own run does."""

    engine = "onnxruntime"
    requires = ("onnxruntime", "onnx", "transformers")

    def __init__(self, precision: str):
        super().__init__()
        self.precision = precision

    def prepare(self, ctx: Context) -> None:
        key = {"fp32": "optimized", "int8": "int8"}[self.precision]
        models = onnx_models(ctx, int8=key == "int8")
        self.session = _ort_session(models[key], ctx.threads)
        self.names = {i.name for i in self.session.get_inputs()}
        info = models["info"]
        self.notes.update({k: info[k] for k in ("fused_ops", "fusion_warning", "plain_check") if k in info})
        self.notes["check"] = info.get(f"{key}_check")
        self.notes["graph"] = str(models[key])

    def run(self, inputs: BenchInputs):
        return self.session.run(None, graph_feed(inputs.feed(), self.names))[0]

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return torch.from_numpy(output).float()


# -- OpenVINO --------------------------------------------------------------------------------------


class OpenVino(Subject):
    """OpenVINO CPU plugin, converted from bertrt's plain (standard-op) ONNX export, compiled with the default precision
    hint (f32 on AVX2, bf16 where the CPU has AMX/AVX512-BF16) and INFERENCE_NUM_THREADS fixed."""

    engine = "openvino"
    requires = ("openvino", "onnx", "onnxruntime", "transformers")

    def __init__(self):
        super().__init__()
        self.precision = "default"

    def prepare(self, ctx: Context) -> None:
        import openvino as ov  # optional dependency (bertrt[openvino])

        models = onnx_models(ctx)
        core = ov.Core()
        model = ov.convert_model(str(models["plain"]))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": ctx.threads})
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = f"default ({getattr(hint, 'name', hint)})".replace("<Type: '", "").replace("'>", "")
        self.notes["performance_hint"] = str(self.compiled.get_property("PERFORMANCE_HINT"))
        self.notes["inference_precision"] = str(hint)
        self.request = self.compiled.create_infer_request()
        self.names = {name for port in self.compiled.inputs for name in port.get_names()}
        self.notes["check"] = _compare(np.asarray(self.request.infer(graph_feed(models["feed"], self.names))[0]),
                                       models["rows"])

    def run(self, inputs: BenchInputs):
        return self.request.infer(graph_feed(inputs.feed(), self.names))[0]

    def embed(self, inputs: BenchInputs, output) -> torch.Tensor:
        return torch.from_numpy(np.array(output)).float()


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
