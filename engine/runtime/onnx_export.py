"""Export a checkpoint to ONNX: the classic BERT graph that ONNX Runtime's transformers optimizer fuses.

Inputs (all int64, dynamic axes ``batch`` and ``sequence``):
    input_ids (batch, sequence), attention_mask (batch, sequence), token_type_ids (batch, sequence)
Output, by task:
    embed:    embeddings (batch, hidden), pooled in the graph by ``heads.pool_padded`` (fp32)
    classify: logits (batch, num_labels)
    ner, qa:  logits (batch, sequence, num_labels | 2); values at padding positions are meaningless

Our encoder keeps Q, K and V in one fused (3H, H) linear. ``ExportBert`` splits it back into three
MatMul + Add chains over the same weights, writes the mask as ``(1 - mask) * finfo.min`` and GELU
with erf, because those are the patterns the optimizer's Attention / SkipLayerNormalization /
BiasGelu / EmbedLayerNormalization fusions match.

Variants: ``fp32`` (standard ONNX ops only: what TensorRT and OpenVINO read), ``fp16`` (the same
in fp16 with fp32 inputs and outputs), ``fp32-ort`` (fused com.microsoft ops, ONNX Runtime only),
``fp16-ort`` (fused, fp16 weights and math, fp32 inputs and outputs), ``int8`` (QDQ on the
standard graph: per-channel int8 weights, calibrated int8 activations; MatMuls with a constant
weight only), ``fp8`` (QDQ with float8 e4m3, opset 19, for TensorRT on sm89+), ``int8-dynamic``
(ONNX Runtime's dynamic INT8 of the fused graph, CPU only: the ``bertrt bench`` peer).

This module is bertrt's one ONNX exporter, quantizer (static QDQ, dynamic) and calibrator: the
backends, ``bertrt.quant.onnx_qdq`` and ``bertrt bench``'s peers call it and share its cache
(``cached_onnx``, layout in ``runtime/cache.py``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..model.bert import BertModel
from ..model.encoder import apply_rotary, relative_position_bucket, rotary_tables
from ..model.heads import PoolingConfig, pool_padded
from . import cache

log = logging.getLogger("bertrt.runtime")

OPSET = 17
# Bump when the exported graph changes: cached exports made by an older revision become stale.
EXPORT_REVISION = 3
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
VARIANTS = ("fp32", "fp16", "fp32-ort", "fp16-ort", "int8", "fp8", "int8-dynamic")
# Fused operators the transformers optimizer must produce per encoder layer (and once per model)
FUSED_PER_LAYER = ("Attention", "SkipLayerNormalization", "BiasGelu")


def output_name(task: str) -> str:
    return "embeddings" if task == "embed" else "logits"


def output_width(config, task: str) -> int:
    return {"embed": config.hidden_size, "classify": config.num_labels, "ner": config.num_labels, "qa": 2}[task]


def repack(out: torch.Tensor, mask: torch.Tensor, task: str) -> torch.Tensor:
    """Padded graph output -> packed layout: token tasks keep real tokens only, row after row."""
    if task in ("ner", "qa"):
        return out[mask.to(out.device).bool()]
    return out


class ExportLayer(nn.Module):
    """One encoder layer in the classic (batch, seq, hidden) form, weights shared with ``layer``.
    The family options are plain graph ops: a pre-norm layer (ModernBERT), GeGLU, rotary q/k, and
    additive biases (relative positions, the local window) summed into ``mask_bias``."""

    def __init__(self, layer: nn.Module, heads: int):
        super().__init__()
        hidden = layer.attn_out.weight.shape[0]
        self.heads, self.head_dim = heads, hidden // heads
        bias = layer.qkv.bias is not None
        self.query, self.key, self.value = (nn.Linear(hidden, hidden, bias=bias) for _ in range(3))
        with torch.no_grad():
            for i, linear in enumerate((self.query, self.key, self.value)):
                linear.weight.copy_(layer.qkv.weight[i * hidden:(i + 1) * hidden])
                if bias:
                    linear.bias.copy_(layer.qkv.bias[i * hidden:(i + 1) * hidden])
        self.attn_out, self.attn_norm = layer.attn_out, layer.attn_norm
        self.ffn_in, self.ffn_out, self.ffn_norm = layer.ffn_in, layer.ffn_out, layer.ffn_norm
        self.gelu, self.gated, self.pre_norm = layer.gelu, layer.gated, layer.pre_norm
        self.window, self.rope_theta = layer.window, layer.rope_theta

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).permute(0, 2, 1, 3)

    def attention(self, x: torch.Tensor, mask_bias: torch.Tensor, rotary) -> torch.Tensor:
        q = self.split_heads(self.query(x))
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return self.attn_out(context.view(context.shape[0], context.shape[1], -1))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffn_in(x)
        approximate = "tanh" if self.gelu == "tanh" else "none"
        if self.gated:
            up, gate = h.chunk(2, dim=-1)
            return self.ffn_out(F.gelu(up, approximate=approximate) * gate)
        return self.ffn_out(F.gelu(h, approximate=approximate))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, rotary=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(x if self.attn_norm is None else self.attn_norm(x), mask_bias, rotary)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(self.attention(x, mask_bias, rotary) + x)
        return self.ffn_norm(self.ffn(x) + x)


class ExportBert(nn.Module):
    """forward(input_ids, attention_mask, token_type_ids) (batch, seq) int64 -> the task output."""

    def __init__(self, model: BertModel, task: str):
        super().__init__()
        model = copy.deepcopy(model).float().cpu().eval()
        config = model.config
        self.task = task
        self.pooling = model.pooling
        self.dense = model.dense
        encoder = model.encoder
        embeddings = encoder.embeddings
        self.word, self.position, self.token_type = embeddings.word, embeddings.position, embeddings.token_type
        self.token_types, self.project = embeddings.token_types, embeddings.project
        self.embed_norm = embeddings.norm
        offset = config.position_offset
        if self.position is not None and offset:  # RoBERTa's rows from pad_token_id + 1 on, so that positions
            # count from 0 as ORT's EmbedLayerNormalization fusion assumes
            self.position = nn.Embedding.from_pretrained(self.position.weight[offset:].clone(), freeze=True)
        self.register_buffer("position_ids", torch.arange(config.max_tokens)[None, :], persistent=False)
        self.layers = nn.ModuleList(ExportLayer(layer, config.num_attention_heads) for layer in encoder.layers)
        self.final_norm = encoder.final_norm
        self.relative_bias = encoder.relative_bias
        self.buckets = config.relative_attention_num_buckets
        self.rotary = {}
        for theta in {layer.rope_theta for layer in encoder.layers if layer.rope_theta is not None}:
            cos, sin = rotary_tables(theta, config.head_dim, config.max_position_embeddings, "cpu")
            self.register_buffer(f"rope_cos_{len(self.rotary)}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{len(self.rotary)}", sin, persistent=False)
            self.rotary[theta] = len(self.rotary)
        if task != "embed" and (task != config.task or model.head is None):
            raise ValueError(f"this {config.architecture} checkpoint has no head for task {task!r}")
        self.head = model.head if task != "embed" else None

    def forward(self, input_ids, attention_mask, token_type_ids):
        seq_len = input_ids.shape[1]
        x = self.word(input_ids)
        if self.token_type is not None:
            x = x + self.token_type(token_type_ids if self.token_types else torch.zeros_like(input_ids))
        if self.position is not None:
            x = x + self.position(self.position_ids[:, :seq_len])
        x = self.embed_norm(x)
        if self.project is not None:
            x = self.project(x)
        # HF's extended attention mask: 0 for real keys, the most negative float for padding keys
        mask = attention_mask[:, None, None, :].to(x.dtype)
        mask_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        index = torch.arange(seq_len, device=x.device)
        distance = index[None, :] - index[:, None]  # key - query
        if self.relative_bias is not None:  # MPNet: one (1, heads, seq, seq) bias shared by the layers
            buckets = relative_position_bucket(distance, self.buckets)
            mask_bias = mask_bias + self.relative_bias(buckets).permute(2, 0, 1)[None]
        for layer in self.layers:
            bias, rotary = mask_bias, None
            if layer.window is not None:
                bias = bias + (distance.abs() > layer.window).to(x.dtype)[None, None] * torch.finfo(x.dtype).min
            if layer.rope_theta is not None:
                slot = self.rotary[layer.rope_theta]
                rotary = (getattr(self, f"rope_cos_{slot}")[:seq_len], getattr(self, f"rope_sin_{slot}")[:seq_len])
            x = layer(x, bias, rotary)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.task == "embed":
            pooled = pool_padded(x, attention_mask, self.pooling, normalize=False)  # the padded twin of heads.pool
            for dense in self.dense:
                pooled = dense(pooled)
            return F.normalize(pooled, dim=-1) if self.pooling.normalize else pooled
        if self.task == "classify":
            head = self.head
            first = (pool_padded(x, attention_mask, PoolingConfig("mean"), normalize=False)
                     if head.pooling == "mean" else x[:, 0])
            return head.pooled(first)
        return self.head(x)


def dummy_inputs(batch: int = 2, seq_len: int = 8, vocab: int = 100) -> tuple[torch.Tensor, ...]:
    """A padded batch (second row shorter) so tracing sees a real mask."""
    ids = torch.randint(1, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    mask[1:, seq_len // 2:] = 0
    return ids, mask, torch.zeros_like(ids)


def to_onnx(model: BertModel, task: str, opset: int = OPSET):
    """Trace ``ExportBert`` with the TorchScript exporter -> onnx.ModelProto (fp32, standard ops).

    The TorchScript exporter (dynamo=False) is used because its graph is the one the ORT
    transformers optimizer's pattern matchers were written against.
    """
    import onnx  # optional dependency (bertrt[onnx])

    module = ExportBert(model, task)
    out = output_name(task)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[out] = {0: "batch"} if task in ("embed", "classify") else {0: "batch", 1: "sequence"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, dummy_inputs(vocab=model.config.vocab_size), buffer, dynamo=False,
                          input_names=list(INPUT_NAMES), output_names=[out], dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    return proto


def optimize(proto, config, use_gpu: bool = False):
    """Run ORT's transformers optimizer (model_type="bert") -> (OnnxModel, fused-op statistics)."""
    from onnxruntime.transformers.fusion_options import FusionOptions  # optional dependency (bertrt[onnx])
    from onnxruntime.transformers.optimizer import optimize_model  # optional dependency (bertrt[onnx])

    options = FusionOptions("bert")
    # our mask is (batch, seq) of 0/1 right-padded: let Attention take it as a mask index
    options.use_raw_attention_mask(False)
    # the optimizer's modules log every fusion at INFO under their bare module names
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("fusion", "onnx_model", "optimizer", "float16", "onnxruntime.transformers")):
            logging.getLogger(name).setLevel(logging.WARNING)
    optimized = optimize_model(copy.deepcopy(proto), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, optimization_options=options, opt_level=0,
                               use_gpu=use_gpu)
    return optimized, optimized.get_fused_operator_statistics()


CALIBRATION_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
    "She plays the violin in the city orchestra every Sunday evening.",
    "What is the capital of Australia?",
    "The patient was given antibiotics for a bacterial infection of the lungs.",
    "I loved the movie, but the ending was disappointing.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Please send the signed invoice to the accounts department by Friday.",
    "The new phone has a faster processor, a brighter screen and a better camera.",
    "Heavy rain is expected across the northern region this weekend.",
    "He scored twice in the second half to win the match for his team.",
    "Barack Obama was born in Honolulu, Hawaii, in 1961.",
    "The recipe calls for two cups of flour, three eggs and a pinch of salt.",
    "Can you recommend a good hotel near the train station in Munich?",
    "The software update fixes a security vulnerability in the login service.",
)


def calibration_batches(model: BertModel, texts: list[str] | None, tokenizer=None, rows: int = 4,
                        seq_len: int | None = 64) -> list[dict[str, np.ndarray]]:
    """Padded batches of ``rows`` sequences for static (QDQ) calibration, all of one shape (the
    histogram calibrators need that): the given texts (truncated to ``seq_len`` tokens; None keeps
    the tokenizer's own truncation), else ``CALIBRATION_TEXTS``; random token ids without a tokenizer."""
    if tokenizer is not None:
        encodings = tokenizer.encode_batch(list(texts or CALIBRATION_TEXTS), "truncate")
        sequences = [(e.ids[:seq_len], e.type_ids[:seq_len]) for e in encodings]
    else:
        rng = np.random.default_rng(0)
        sequences = []
        for i in range(16):
            length = 4 + (i * 37) % ((seq_len or 64) - 3)
            ids = rng.integers(1, model.config.vocab_size, size=length).tolist()
            sequences.append((ids, [0] * length))
    width = max(len(ids) for ids, _ in sequences)
    batches = []
    for start in range(0, len(sequences), rows):
        chunk = sequences[start:start + rows]
        chunk += [chunk[-1]] * (rows - len(chunk))  # same shape for every batch
        ids = np.zeros((rows, width), dtype=np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for row, (seq, seq_types) in enumerate(chunk):
            ids[row, :len(seq)], types[row, :len(seq)], mask[row, :len(seq)] = seq, seq_types, 1
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return batches


# Calibration methods by the names bertrt's CLI and quant API use (onnxruntime.quantization.CalibrationMethod)
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy",
                       "distribution": "Distribution"}


def weighted_matmuls(proto, keep_float_rows: int | None = None) -> list[str]:
    """Names of the MatMuls with a constant weight (the projections and FFN; attention's Q·K and P·V
    have none), except those whose weight has ``keep_float_rows`` input rows."""
    initializers = {init.name: init for init in proto.graph.initializer}
    return [node.name for node in proto.graph.node
            if node.op_type == "MatMul" and any(name in initializers for name in node.input)
            and not (keep_float_rows and any(name in initializers and initializers[name].dims[0] == keep_float_rows
                                             for name in node.input))]


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer prints calibration progress on stdout and advises pre-processing on the root logger."""
    quiet = logging.Filter()
    quiet.filter = lambda record: "pre-processing" not in record.getMessage()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            yield Path(tmp)
    finally:
        root.removeFilter(quiet)


def quantize_qdq(proto, calibration: list[dict[str, np.ndarray]], float8: bool = False,
                 keep_float_rows: int | None = None, method: str | None = None, symmetric: bool = True,
                 per_channel: bool | None = None):
    """Static quantization in QDQ form: per-channel weights and calibrated activations of every
    MatMul with a constant weight (the projections and FFN; attention's Q·K and P·V stay float).

    keep_float_rows: MatMuls whose weight has this many input rows stay float. Passing the
    intermediate size keeps the FFN down-projection in float: its input, the GELU output, has a
    long one-sided tail that symmetric per-tensor int8 cannot hold (on all-MiniLM-L6-v2 the worst
    embedding cosine vs fp32 goes from 0.86 to 0.98 with it). symmetric: int8 activations with zero
    point 0, which TensorRT requires; False gives uint8 activations (ONNX Runtime CPU only).
    method: a ``CALIBRATION_METHODS`` name (default minmax, distribution for float8). per_channel:
    per-channel weight scales (default: yes for int8, no for float8).
    """
    import onnx  # optional dependency (bertrt[onnx])
    from onnxruntime.quantization import (  # optional dependency (bertrt[onnx])
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    method = method or ("distribution" if float8 else "minmax")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}")
    with _quiet_quantizer() as tmp:
        src, dst = tmp / "in.onnx", tmp / "out.onnx"
        onnx.save(proto, str(src))
        kind = QuantType.QFLOAT8E4M3FN if float8 else QuantType.QInt8
        activation = kind if symmetric else QuantType.QUInt8
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=not float8 if per_channel is None else per_channel,
                        activation_type=activation, weight_type=kind,
                        nodes_to_quantize=weighted_matmuls(proto, keep_float_rows), op_types_to_quantize=["MatMul"],
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        return onnx.load(str(dst))


def quantize_dynamic_int8(proto):
    """ONNX Runtime's dynamic INT8 (MatMulInteger / DynamicQuantizeMatMul: per-tensor u8 activations
    quantized at run time, per-channel int8 weights), of a standard or an optimizer-fused graph
    (``DefaultTensorType`` lets the quantizer type the com.microsoft ops it cannot shape-infer)."""
    import onnx  # optional dependency (bertrt[onnx])
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional dependency (bertrt[onnx])

    if any(node.domain == "com.microsoft" for node in proto.graph.node) and not any(
            opset.domain == "com.microsoft" for opset in proto.opset_import):
        proto = copy.deepcopy(proto)  # the optimizer's in-memory graph uses the fused ops without importing them
        proto.opset_import.add(domain="com.microsoft", version=1)
    with _quiet_quantizer() as tmp:
        src, dst = tmp / "in.onnx", tmp / "out.onnx"
        onnx.save(proto, str(src))
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(str(dst))


@dataclass
class ExportResult:
    path: Path
    variant: str
    task: str
    fused: dict[str, int] = field(default_factory=dict)
    max_abs_diff: float | None = None


def build_variant(model: BertModel, task: str, variant: str, calibration_texts: list[str] | None = None,
                  tokenizer=None, use_gpu: bool = False):
    """The ONNX ModelProto of one variant, plus fused-operator statistics when the optimizer ran."""
    if variant not in VARIANTS:
        raise ValueError(f"ONNX variant must be one of {VARIANTS}, got {variant!r}")
    opset = 19 if variant == "fp8" else OPSET  # float8 QuantizeLinear needs opset 19
    proto = to_onnx(model, task, opset)
    fused: dict[str, int] = {}
    if variant == "int8-dynamic":  # ONNX Runtime's own INT8 of the fused graph (the bench peer)
        optimized, fused = optimize(proto, model.config, use_gpu=use_gpu)
        return quantize_dynamic_int8(optimized.model), fused
    if variant in ("int8", "fp8"):
        calibration = calibration_batches(model, calibration_texts, tokenizer)
        config = model.config
        keep = config.intermediate_size if config.intermediate_size != config.hidden_size else None
        return quantize_qdq(proto, calibration, float8=variant == "fp8", keep_float_rows=keep), fused
    if variant.endswith("-ort"):
        optimized, fused = optimize(proto, model.config, use_gpu=use_gpu)
        if variant == "fp16-ort":
            optimized.convert_float_to_float16(keep_io_types=True)
        proto = optimized.model
    elif variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16  # optional (bertrt[onnx])

        proto = convert_float_to_float16(proto, keep_io_types=True)
    return proto, fused


def stamp(proto, meta: dict[str, str]) -> None:
    """Record bertrt metadata (task, variant, model hash, heads, hidden) in the ONNX file."""
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"bertrt.{key}", str(value)


def export(checkpoint, output: str | Path, task: str | None = None, variant: str = "fp32-ort",
           calibration_texts: list[str] | None = None, check: bool = True) -> ExportResult:
    """Write one ONNX variant of ``checkpoint`` to ``output``; with ``check``, run it in ONNX Runtime
    on a padded mixed-length batch and record the largest difference from our torch model."""
    task = task or checkpoint.config.task
    proto, fused = build_variant(checkpoint.model, task, variant, calibration_texts, checkpoint.tokenizer)
    config = checkpoint.config
    stamp(proto, {"task": task, "variant": variant, "model_hash": cache.model_hash(checkpoint.model_dir),
                  "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size})
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    cache.atomic_write_bytes(output, proto.SerializeToString())
    result = ExportResult(output, variant, task, fused)
    if check:
        result.max_abs_diff = check_against_torch(output, checkpoint.model, task)
    return result


def check_against_torch(path: Path, model: BertModel, task: str, seed: int = 0) -> float:
    """Max |ORT - torch| over real tokens of a padded batch with lengths 3, 11 and 17 (CPU, fp32 ref)."""
    import onnxruntime as ort  # optional dependency (bertrt[onnx])

    generator = torch.Generator().manual_seed(seed)
    lengths = [17, 3, 11]
    batch, seq_len = len(lengths), max(lengths)
    ids = torch.randint(1, model.config.vocab_size, (batch, seq_len), generator=generator)
    mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[:, seq_len // 2:] = 1 if model.config.type_vocab_size > 1 else 0
    types *= mask
    reference_model = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        reference = reference_model.forward_padded(ids, mask, types, task=task).float()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
    got = torch.from_numpy(session.run(None, feeds)[0]).float()
    if task in ("ner", "qa"):
        valid = mask.bool()
        got, reference = got[valid], reference[valid]
    return float((got - reference).abs().max())


def versions() -> dict[str, str]:
    """Versions an exported graph depends on; a cached file made under others is stale."""
    import onnx  # optional dependency (bertrt[onnx])
    import onnxruntime  # optional dependency (bertrt[onnx])

    return {"bertrt": __version__, "export_revision": str(EXPORT_REVISION), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def cached_onnx(checkpoint, task: str, variant: str, use_gpu: bool = False, root: Path | None = None) -> Path:
    """The path of ``variant`` for ``task`` in bertrt's cache, exported now if missing, corrupt or stale.

    Key: <root>/onnx/<model hash>/<task>-<variant>[-gpu].onnx, root = cache_dir() unless given (the
    backends, ``bertrt bench``'s peers and ``bertrt export`` all read this one cache); the sidecar
    records the versions that made it (a changed torch / onnx / onnxruntime / bertrt makes it stale)
    and the fused-operator statistics (``fused_operators``).
    """
    digest = cache.model_hash(checkpoint.model_dir)
    suffix = "-gpu" if use_gpu and variant.endswith("-ort") else ""
    path = Path(root or cache.cache_dir()) / "onnx" / digest / f"{task}-{variant}{suffix}.onnx"
    expect = {"model_hash": digest, "task": task, "variant": variant, "versions": versions()}
    if cache.verified_artifact(path, expect) is not None:
        return path
    log.info("exporting %s to ONNX (%s, %s)", checkpoint.model_dir, task, variant)
    proto, fused = build_variant(checkpoint.model, task, variant, tokenizer=checkpoint.tokenizer, use_gpu=use_gpu)
    stamp(proto, {"task": task, "variant": variant, "model_hash": digest,
                  "num_heads": checkpoint.config.num_attention_heads, "hidden_size": checkpoint.config.hidden_size})
    cache.write_artifact(path, proto.SerializeToString(), {**expect, "fused": fused})
    return path


def fused_operators(path: Path) -> dict[str, int]:
    """The optimizer's fused-operator counts recorded beside a ``cached_onnx`` file ({} for graphs
    the optimizer did not run on)."""
    record = cache.read_record(cache.sidecar(Path(path))) or {}
    return {name: int(count) for name, count in record.get("fused", {}).items() if count}
