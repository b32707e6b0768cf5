"""ONNX files of a checkpoint with QDQ (QuantizeLinear/DequantizeLinear) nodes for ONNX Runtime and
TensorRT, and the ONNX Runtime dynamic-INT8 baseline the benchmarks compare against.

Thin entry points over ``bertrt.runtime.onnx_export``, bertrt's one ONNX exporter, quantizer and
calibrator: the FP32 graph (inputs input_ids, attention_mask, token_type_ids (batch, sequence)
int64) is ``onnx_export.to_onnx``; static QDQ is ``onnx_export.quantize_qdq`` (per-channel symmetric
int8 weights, symmetric int8 activations: what TensorRT requires) calibrated on the same texts as
``quantize_``; dynamic INT8 is ``onnx_export.quantize_dynamic_int8``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime import cache, onnx_export

# The calibration methods ``export_qdq`` takes (a subset of onnx_export.CALIBRATION_METHODS)
ORT_METHODS = {name: onnx_export.CALIBRATION_METHODS[name] for name in ("minmax", "percentile", "entropy")}


def fp32_onnx(model, task: str):
    """onnx.ModelProto of the fp32 model (standard ops)."""
    return onnx_export.to_onnx(model, task)


class TextReader:
    """CalibrationDataReader over texts: one padded batch of ``batch_size`` texts per get_next()
    (``onnx_export.calibration_batches``: every batch padded to the longest text)."""

    def __init__(self, texts: list[str], tokenizer, batch_size: int = 8):
        self.batches = onnx_export.calibration_batches(None, list(texts), tokenizer, rows=batch_size, seq_len=None)
        self._iter = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.batches)


def _write(proto, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cache.atomic_write_bytes(out_path, proto.SerializeToString())
    return out_path


def export_qdq(checkpoint, out_path: str | Path, calibration_texts: list[str], method: str = "minmax",
               task: str | None = None, per_channel: bool = True) -> Path:
    """Write a QDQ int8 ONNX model of ``checkpoint`` (fp32) calibrated on ``calibration_texts``."""
    if method not in ORT_METHODS:
        raise InputError(f"method must be one of {sorted(ORT_METHODS)}, got {method!r}")
    if not calibration_texts:
        raise InputError("QDQ export needs calibration texts")
    task = task or checkpoint.config.task
    calibration = TextReader(calibration_texts, checkpoint.tokenizer).batches
    proto = onnx_export.quantize_qdq(fp32_onnx(checkpoint.model, task), calibration, method=method,
                                     per_channel=per_channel)
    return _write(proto, out_path)


def export_dynamic_int8(checkpoint, out_path: str | Path, task: str | None = None, optimize: bool = False) -> Path:
    """ONNX Runtime's dynamic INT8 (MatMulInteger / DynamicQuantizeMatMul, per-tensor u8 activations,
    per-channel int8 weights): the baseline bertrt's own INT8 is measured against. The session applies
    ORT's graph optimizations when it loads the file; ``optimize`` runs the offline BERT fusions first
    (the graph ``bertrt bench``'s ort-int8 peer runs, ``onnx_export`` variant "int8-dynamic")."""
    task = task or checkpoint.config.task
    proto = fp32_onnx(checkpoint.model, task)
    if optimize:
        proto = onnx_export.optimize(proto, checkpoint.config)[0].model
    return _write(onnx_export.quantize_dynamic_int8(proto), out_path)
