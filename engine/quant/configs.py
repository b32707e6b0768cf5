"""Quantization configs: one frozen dataclass per scheme, handed to ``quantize_(model, config)``.

``keep`` names modules that stay in higher precision (fp32 for int8 schemes, the model's original
dtype for bf16/fp16). Each entry is an fnmatch pattern on module names of ``BertModel``
(``encoder.layers.3.ffn_out``, ``head.classifier``...) or one of the aliases:

    "embeddings"          -> encoder.embeddings
    "head" / "classifier" -> the task head (classifier, pooler, qa_outputs)
    "layer.N"/"layers.N"  -> all of encoder layer N
    "qkv", "attn_out", "ffn_in", "ffn_out" -> that projection in every layer
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields

from ..errors import InputError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
PROJECTIONS = ("qkv", "attn_out", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class QuantConfig:
    """Base class: ``keep`` patterns (see module docstring)."""

    keep: tuple[str, ...] = ()

    name = "base"

    def __post_init__(self):
        if isinstance(self.keep, str):
            object.__setattr__(self, "keep", (self.keep,))
        object.__setattr__(self, "keep", tuple(self.keep))
        for pattern in self.keep:
            if not isinstance(pattern, str) or not pattern.strip():
                raise InputError(f"keep entries must be non-empty strings, got {pattern!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["keep"] = list(self.keep)
        return {"type": self.name, **data}


@dataclass(frozen=True)
class Bf16Config(QuantConfig):
    """Cast weights and activations to bfloat16 (pooling and kept modules stay fp32)."""

    name = "bf16"


@dataclass(frozen=True)
class Fp16Config(QuantConfig):
    """Cast weights and activations to float16 (pooling and kept modules stay fp32)."""

    name = "fp16"


@dataclass(frozen=True)
class Int8DynamicConfig(QuantConfig):
    """W8A8 with per-output-channel symmetric int8 weights and per-token int8 activations whose scales
    are computed at run time. Needs no calibration data, unless ``smoothquant_alpha`` is set.

    act_symmetric: False (act_bits 7 only) gives each token a zero point over its own [min, max]
        range: a bit more resolution where inputs are one-sided (GELU outputs) or skewed by outliers.
    smoothquant_alpha: None, or alpha in [0, 1]: SmoothQuant's per-input-channel factors
        s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), from calibration texts; the kernel multiplies the
        activations by 1 / s while it quantizes them.
    """

    name = "int8-dynamic"
    kernel: str = "auto"  # CPU GEMM: "auto" | "packed" | "onednn" | "op" (bertrt.ops.int8_linear dispatcher)
    act_bits: int = 8  # 7: see ACT_BITS_NOTE
    act_symmetric: bool = True
    smoothquant_alpha: float | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_kernel(self.kernel)
        _check_act_bits(self.act_bits)
        if not self.act_symmetric and self.act_bits != 7:
            raise InputError("act_symmetric=False (per-token zero points) needs act_bits=7")
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise InputError(f"smoothquant_alpha must be in [0, 1], got {self.smoothquant_alpha}")


@dataclass(frozen=True)
class Int8StaticConfig(QuantConfig):
    """W8A8 with per-output-channel symmetric int8 weights and one calibrated activation scale per
    linear input (per-tensor; asymmetric with a zero point unless ``symmetric``).

    method: "minmax" | "percentile" (clip at ``percentile`` of the observed values) |
        "entropy" (TensorRT's KL-divergence threshold over a ``bins``-bin histogram of |x|)
    smoothquant_alpha: None, or alpha in [0, 1]: migrate activation outliers into the weights with
        per-input-channel factors s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (SmoothQuant).
    act_bits: 8, or 7 (the calibrated range on a 7-bit grid; see ACT_BITS_NOTE)
    """

    name = "int8-static"
    method: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048
    symmetric: bool = False
    smoothquant_alpha: float | None = None
    kernel: str = "auto"
    act_bits: int = 8

    def __post_init__(self):
        super().__post_init__()
        if self.method not in CALIBRATION_METHODS:
            raise InputError(f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.bins < 256:
            raise InputError(f"bins must be at least 256, got {self.bins}")
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise InputError(f"smoothquant_alpha must be in [0, 1], got {self.smoothquant_alpha}")
        _check_kernel(self.kernel)
        _check_act_bits(self.act_bits)


KERNELS = ("auto", "packed", "onednn", "op")
ACT_BITS = (8, 7)
ACT_BITS_NOTE = """act_bits=7 quantizes the activations to [-63, 63] (dynamic) or [-64, 63] (static) instead of
the int8 range. Every kernel then computes the same thing, and on CPUs without VNNI/AMX the packed
kernel sums two u7 x s7 products in 16 bits without overflow, which halves its integer-multiplier
work (INT8 GEMMs about 1.4x faster there). The price is one bit of activation resolution: see
docs/quantization.md for the fidelity it keeps."""


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _check_act_bits(act_bits) -> None:
    if isinstance(act_bits, bool) or act_bits not in ACT_BITS:
        raise InputError(f"act_bits must be one of {ACT_BITS}, got {act_bits!r}")


CONFIGS: dict[str, type[QuantConfig]] = {
    "bf16": Bf16Config,
    "fp16": Fp16Config,
    "int8-dynamic": Int8DynamicConfig,
    "int8-static": Int8StaticConfig,
}


def config_from_dict(data: dict) -> QuantConfig:
    """Inverse of ``QuantConfig.to_dict`` (unknown keys raise, naming them)."""
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in CONFIGS:
        raise InputError(f"unknown quantization config type {kind!r}; known: {sorted(CONFIGS)}")
    cls = CONFIGS[kind]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{kind} config has unknown fields {unknown}")
    if "keep" in data:
        data["keep"] = tuple(data["keep"])
    return cls(**data)


def expand_pattern(pattern: str) -> list[str]:
    """An alias or pattern -> fnmatch patterns over BertModel module names."""
    p = pattern.strip()
    if p == "embeddings":
        return ["encoder.embeddings", "encoder.embeddings.*"]
    if p in ("head", "classifier"):
        return ["head", "head.*"]
    if p in PROJECTIONS:
        return [f"encoder.layers.*.{p}"]
    for prefix in ("layer.", "layers."):
        if p.startswith(prefix) and p[len(prefix):].isdigit():
            n = p[len(prefix):]
            return [f"encoder.layers.{n}", f"encoder.layers.{n}.*"]
    return [p, p + ".*"]


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class KeepPlan:
    """Resolved ``keep`` patterns for one model: which pattern matched which module names."""

    patterns: dict[str, list[str]] = field(default_factory=dict)

    def kept(self, name: str) -> bool:
        return any(matches(name, expanded) for expanded in self.patterns.values())
