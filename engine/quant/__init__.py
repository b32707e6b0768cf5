"""Quantization: ``quantize_(model, config)`` with bf16 / fp16 / int8 dynamic / int8 static configs,
quantized checkpoints, fidelity reports and QDQ ONNX export (see docs/quantization.md)."""

from .api import quantize_, register_handler
from .checkpoint import is_quantized_dir, load_quantized, save_quantized
from .configs import Bf16Config, Fp16Config, Int8DynamicConfig, Int8StaticConfig, QuantConfig
from .modules import Int8Linear, KeepPrecision

__all__ = ["Bf16Config", "Fp16Config", "Int8DynamicConfig", "Int8Linear", "Int8StaticConfig", "KeepPrecision",
           "QuantConfig", "is_quantized_dir", "load_quantized", "quantize_", "register_handler", "save_quantized"]
