"""ONNX export with QDQ (QuantizeLinear/DequantizeLinear) nodes for ONNX Runtime and TensorRT, and the
ONNX Runtime dynamic-INT8 baseline the benchmarks compare against.

The FP32 graph comes from ``bertrt.runtime.onnx_export.to_onnx`` (inputs input_ids, attention_mask,
token_type_ids (batch, sequence) int64). Static QDQ: ``onnxruntime.quantization.quantize_static``
with QuantFormat.QDQ, per-channel symmetric int8 weights and symmetric int8 activations (what
TensorRT requires), calibrated on the same texts as ``quantize_`` through a CalibrationDataReader.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def fp32_onnx(model, task: str):
    """onnx.ModelProto of the fp32 model (standard ops)."""
    try:
        from ..runtime.onnx_export import to_onnx
    except ImportError as exc:  # the exporter ships with bertrt.runtime
        raise InputError(f"ONNX export needs bertrt.runtime.onnx_export: {exc}") from exc
    return to_onnx(model, task)


class TextReader:
    """CalibrationDataReader over texts: one padded batch of ``batch_size`` texts per get_next()."""

    def __init__(self, texts: list[str], tokenizer, batch_size: int = 8):
        encodings = tokenizer.encode_batch(list(texts), "truncate")
        self.batches = []
        for start in range(0, len(encodings), batch_size):
            chunk = encodings[start:start + batch_size]
            length = max(len(e.ids) for e in chunk)
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, e in enumerate(chunk):
                ids[row, :len(e.ids)] = e.ids
                mask[row, :len(e.ids)] = 1
                types[row, :len(e.ids)] = e.type_ids
            self.batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        self._iter = iter(self.batches)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.batches)


def export_qdq(checkpoint, out_path: str | Path, calibration_texts: list[str], method: str = "minmax",
               task: str | None = None, per_channel: bool = True) -> Path:
    """Write a QDQ int8 ONNX model of ``checkpoint`` (fp32) calibrated on ``calibration_texts``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in ORT_METHODS:
        raise InputError(f"method must be one of {sorted(ORT_METHODS)}, got {method!r}")
    if not calibration_texts:
        raise InputError("QDQ export needs calibration texts")
    task = task or checkpoint.config.task
    proto = fp32_onnx(checkpoint.model, task)
    reader = TextReader(calibration_texts, checkpoint.tokenizer)

    class Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

    initializers = {init.name for init in proto.graph.initializer}
    weighted = [n.name for n in proto.graph.node if n.op_type == "MatMul" and any(i in initializers for i in n.input)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(proto, str(src))
        quantize_static(str(src), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=weighted,
                        op_types_to_quantize=["MatMul"],
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out_path


def export_dynamic_int8(checkpoint, out_path: str | Path, task: str | None = None, optimize: bool = False) -> Path:
    """ONNX Runtime's dynamic INT8 (MatMulInteger / DynamicQuantizeMatMul, per-tensor u8 activations,
    per-channel int8 weights): the baseline bertrt's own INT8 is measured against. The session applies
    ORT's graph optimizations when it loads the file; ``optimize`` would run the offline BERT fusions
    first, which this onnxruntime's quantize_dynamic cannot shape-infer (com.microsoft ops)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    task = task or checkpoint.config.task
    proto = fp32_onnx(checkpoint.model, task)
    if optimize:
        from ..runtime.onnx_export import optimize as ort_optimize

        proto = ort_optimize(proto, checkpoint.config)[0].model
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(proto, str(src))
        quantize_dynamic(str(src), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
    return out_path
