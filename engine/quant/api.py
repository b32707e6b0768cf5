"""``quantize_(model, config)``: rewrite a ``BertModel`` in place for one quantization scheme.

One handler per config type (torchao style): ``register_handler(ConfigType)`` decorates a function
``handler(model, config, context) -> dict`` that swaps modules and returns the metadata a quantized
checkpoint stores. ``model.quantization`` holds that metadata afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..model.bert import BertModel
from . import calibration as calib
from .configs import (
    Bf16Config,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    QuantConfig,
    config_from_dict,
    expand_pattern,
    matches,
)
from .modules import Int8Linear, KeepPrecision, onednn_available, packed_available

log = logging.getLogger("bertrt.quant")
FORMAT_VERSION = 1

_HANDLERS: dict[type, Callable] = {}


def register_handler(config_type: type[QuantConfig]):
    def decorate(fn):
        _HANDLERS[config_type] = fn
        return fn
    return decorate


@dataclass
class Context:
    calibration: Any = None
    tokenizer: Any = None
    progress: bool = False
    batch_tokens: int = 4096


def _unwrap(target) -> tuple[BertModel, Any]:
    """BertModel from a BertModel, Checkpoint or Engine, plus the tokenizer when there is one."""
    if isinstance(target, BertModel):
        return target, None
    model = getattr(target, "model", None) or getattr(getattr(target, "checkpoint", None), "model", None)
    if isinstance(model, BertModel):
        tokenizer = getattr(target, "tokenizer", None)
        return model, tokenizer
    raise InputError(f"quantize_ takes a bertrt BertModel, Checkpoint or Engine, got {type(target).__name__}")


def quantize_(target, config: QuantConfig, calibration=None, *, tokenizer=None, progress: bool = False,
              batch_tokens: int = 4096) -> BertModel:
    """Quantize ``target`` (BertModel, Checkpoint or Engine) in place and return its BertModel.

    calibration: texts (list of str), a path to a text/JSONL file, or PackedBatch objects; needed by
    Int8StaticConfig only. tokenizer: for texts when ``target`` is a bare BertModel.
    progress: tqdm progress bars during calibration.
    """
    if not isinstance(config, QuantConfig):
        raise InputError(f"config must be a bertrt quantization config (e.g. Int8DynamicConfig()), "
                         f"got {type(config).__name__}")
    model, own_tokenizer = _unwrap(target)
    existing = getattr(model, "quantization", None)
    if existing:
        raise InputError(f"model is already quantized ({existing['config']['type']}); quantize the original model")
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise InputError(f"no quantization handler for {type(config).__name__}")
    context = Context(calibration, tokenizer or own_tokenizer, progress, batch_tokens)
    meta = handler(model, config, context)
    model.quantization = {"format_version": FORMAT_VERSION, "config": config.to_dict(), **meta}
    if hasattr(target, "checkpoint") and hasattr(target, "precision") and meta.get("compute_dtype"):
        target.precision = meta["compute_dtype"]
    replan = getattr(getattr(target, "runner", None), "replan", None)
    if replan is not None:  # an Engine: its kernel plan must know the new linears and dtype
        replan(getattr(target, "precision", None) or meta.get("compute_dtype", "float32"))
    return model


# -- module selection ---------------------------------------------------------------------------------


def resolve_keep(model: nn.Module, keep: tuple[str, ...]) -> dict[str, list[str]]:
    """pattern -> module names it matches; a pattern matching nothing raises InputError."""
    names = [n for n, _ in model.named_modules() if n]
    result = {}
    for pattern in keep:
        expanded = expand_pattern(pattern)
        hit = [n for n in names if matches(n, expanded)]
        if not hit:
            sample = ", ".join(n for n in names if n.count(".") <= 3 and "layers.1" not in n)[:400]
            raise InputError(f"keep pattern {pattern!r} matches no module of this model "
                             f"({model.config.architecture}); module names look like: {sample}")
        result[pattern] = hit
    return result


def _top_level(names: list[str]) -> list[str]:
    """Drop names whose ancestor is already listed."""
    chosen = []
    for n in sorted(set(names), key=lambda s: (s.count("."), s)):
        if not any(n.startswith(c + ".") for c in chosen):
            chosen.append(n)
    return chosen


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def linear_names(model: nn.Module, kept: set[str]) -> list[str]:
    """nn.Linear modules that are not kept (nor inside a kept module)."""
    out = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and not any(name == k or name.startswith(k + ".") for k in kept):
            out.append(name)
    return out


# -- bf16 / fp16 --------------------------------------------------------------------------------------

_WRAPPABLE_SUFFIXES = ("encoder.embeddings", "head", "head.pooler")


def _cast_handler(dtype: torch.dtype):
    def handler(model: BertModel, config: QuantConfig, context: Context) -> dict:
        resolved = resolve_keep(model, config.keep)
        kept = _top_level([n for names in resolved.values() for n in names])
        modules = dict(model.named_modules())
        for name in kept:
            ok = (isinstance(modules[name], nn.Linear) or name in _WRAPPABLE_SUFFIXES
                  or (name.startswith("encoder.layers.") and name.count(".") == 2))
            if not ok:
                raise InputError(f"cannot keep {name!r} ({type(modules[name]).__name__}) in higher precision: its "
                                 "parameters are read directly by fused ops; keep its enclosing layer instead")
        original = next(model.parameters()).dtype
        if original not in (torch.float32, torch.float64):
            raise InputError(f"{config.name} quantization starts from an fp32 model; this one is {original}")
        for name in kept:
            out_dtype = torch.float32 if name == "head" else (dtype if name == "encoder.embeddings" else None)
            _set_module(model, name, KeepPrecision(modules[name], torch.float32, out_dtype))
        model.to(dtype)
        return {"compute_dtype": _dtype_name(dtype), "kept": kept, "modules": {}}
    return handler


register_handler(Bf16Config)(_cast_handler(torch.bfloat16))
register_handler(Fp16Config)(_cast_handler(torch.float16))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# -- int8 ---------------------------------------------------------------------------------------------


def _int8_targets(model: BertModel, config: QuantConfig) -> tuple[list[str], list[str]]:
    resolved = resolve_keep(model, config.keep)
    kept = _top_level([n for names in resolved.values() for n in names])
    targets = linear_names(model, set(kept))
    if not targets:
        raise InputError(f"keep={list(config.keep)} leaves no linear layer to quantize")
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise InputError(f"cannot quantize a model with {dtype} parameters")
    device = next(model.parameters()).device
    if config.kernel == "packed":
        if device.type != "cpu":
            raise InputError(f"kernel='packed' runs on CPU; the model is on {device}")
        reason = packed_available()
        if reason:
            raise InputError(f"kernel='packed' is unavailable: {reason}")
    if config.kernel == "onednn":
        if device.type != "cpu":
            raise InputError(f"kernel='onednn' runs on CPU; the model is on {device}")
        reason = onednn_available()
        if reason:
            raise InputError(f"kernel='onednn' is unavailable: {reason}")
    return kept, targets


def _module_meta(module: Int8Linear) -> dict:
    return {"kind": "int8_linear", "mode": module.mode, "in_features": module.in_features,
            "out_features": module.out_features, "bias": module.bias is not None,
            "smooth": module.input_multiplier is not None, "tensors": module.tensor_names()}


def _calibrate_ranges(model: BertModel, targets: list[str], context: Context):
    """(batches, calibrator) after one pass recording each target's per-channel input range."""
    batches = calib.as_batches(context.calibration, context.tokenizer, context.batch_tokens)
    calibrator = calib.Calibrator(model, targets)
    calibrator.collect_minmax(batches, context.progress)
    return batches, calibrator


def _smoothquant(calibrator, modules: dict, targets: list[str], alpha: float) -> dict:
    """name -> SmoothQuant's per-input-channel factors s (K,) from the recorded ranges."""
    return {name: calib.smoothquant_factors(calibrator.stats[name].absmax_per_channel(), modules[name].weight, alpha)
            for name in targets}


@register_handler(Int8DynamicConfig)
def _int8_dynamic(model: BertModel, config: Int8DynamicConfig, context: Context) -> dict:
    kept, targets = _int8_targets(model, config)
    modules = dict(model.named_modules())
    smooth, extra = {}, {}
    if config.smoothquant_alpha is not None:
        if context.calibration is None:
            raise InputError("smoothquant_alpha needs calibration data: quantize_(model, "
                             "Int8DynamicConfig(smoothquant_alpha=0.5), calibration=texts)")
        batches, calibrator = _calibrate_ranges(model, targets, context)
        smooth = _smoothquant(calibrator, modules, targets, config.smoothquant_alpha)
        extra = {"calibration": {"batches": len(batches), "tokens": calibrator.stats[targets[0]].count}}
    meta = {}
    for name in targets:
        q = Int8Linear.from_float(modules[name], mode="dynamic", smooth=smooth.get(name), kernel=config.kernel,
                                  act_bits=config.act_bits, act_symmetric=config.act_symmetric)
        _set_module(model, name, q)
        meta[name] = _module_meta(q)
    return {"compute_dtype": _dtype_name(next(model.parameters()).dtype), "kept": kept, "modules": meta, **extra}


@register_handler(Int8StaticConfig)
def _int8_static(model: BertModel, config: Int8StaticConfig, context: Context) -> dict:
    kept, targets = _int8_targets(model, config)
    if context.calibration is None:
        raise InputError("int8-static needs calibration data: quantize_(model, Int8StaticConfig(), calibration=texts)")
    batches, calibrator = _calibrate_ranges(model, targets, context)
    modules = dict(model.named_modules())
    smooth = {}
    if config.smoothquant_alpha is not None:
        smooth = _smoothquant(calibrator, modules, targets, config.smoothquant_alpha)
        for name, s in smooth.items():  # the histograms are of the smoothed activations
            calibrator.stats[name].multiplier = 1.0 / s
    if config.method != "minmax":
        calibrator.collect_histograms(batches, config.bins, context.progress)
    meta = {}
    n_tokens = calibrator.stats[targets[0]].count
    for name in targets:
        scale, zp = calib.activation_qparams(calibrator.stats[name], config.method, config.symmetric,
                                             config.percentile)
        q = Int8Linear.from_float(modules[name], mode="static", input_scale=scale, input_zero_point=zp,
                                  smooth=smooth.get(name), kernel=config.kernel, act_bits=config.act_bits)
        _set_module(model, name, q)
        meta[name] = _module_meta(q)
    return {"compute_dtype": _dtype_name(next(model.parameters()).dtype), "kept": kept, "modules": meta,
            "calibration": {"batches": len(batches), "tokens": n_tokens}}


def restore_structure(model: BertModel, meta: dict) -> BertModel:
    """Rebuild the module structure ``meta`` (``model.quantization``) describes on a fresh fp32 model,
    with placeholder values: what loading a quantized checkpoint does before reading its tensors."""
    config = config_from_dict(meta["config"])
    modules = dict(model.named_modules())
    if isinstance(config, (Bf16Config, Fp16Config)):
        dtype = torch.bfloat16 if isinstance(config, Bf16Config) else torch.float16
        _cast_handler(dtype)(model, config, Context())
    else:
        kernel, act_bits = getattr(config, "kernel", "auto"), getattr(config, "act_bits", 8)
        act_symmetric = getattr(config, "act_symmetric", True)
        for name, info in meta.get("modules", {}).items():
            if name not in modules or not isinstance(modules[name], nn.Linear):
                raise InputError(f"quantization metadata names module {name!r}, which this model has no linear for")
            src = modules[name]
            if (src.in_features, src.out_features) != (info["in_features"], info["out_features"]):
                raise InputError(f"quantization metadata for {name!r} says {info['out_features']}x{info['in_features']}"
                                 f", the model has {src.out_features}x{src.in_features}")
            _set_module(model, name, Int8Linear(info["in_features"], info["out_features"], info["bias"],
                                                info["mode"], info.get("smooth", False), kernel, act_bits,
                                                act_symmetric))
    model.quantization = meta
    return model
