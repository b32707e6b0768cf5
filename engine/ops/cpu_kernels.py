"""Torch-level glue for the C++ CPU kernels in ``bertrt._C`` (``csrc/cpu``).

Each op here has exactly the signature of its ``<op>_ref`` in ``engine/ops``. It checks devices,
dtypes, shapes and contiguity (``ValueError`` naming the offending tensor), allocates the output with
torch and passes data pointers, shapes and dtype codes to the kernel of the active ISA variant.

ISA variants (best first): ``amx``, ``avx512``, ``avx2``, ``scalar``. The best one this CPU runs is
chosen at import (override with ``BERTRT_CPU_ISA=<name>``); tests and benchmarks force one with::

    with use_isa("scalar"):
        y = bias_gelu(x, b)

Threads: the kernels use ``torch.get_num_threads()`` OpenMP threads (same runtime as torch's), or
what ``thread_budget`` says inside its scope.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from collections.abc import Callable, Iterator

import torch
from bertrt import _C

from ..errors import check_limits

# each op's contract is checked by the op's own _check; this glue adds only its limits (CPU tensors,
# contiguous, a dtype the kernels take, LIMITS)
from .attention import _check as _check_attention
from .bias_gelu import _check as _check_bias_gelu
from .bias_residual_layer_norm import _check as _check_bias_residual_layer_norm
from .embedding_layer_norm import _check as _check_embedding_layer_norm
from .embedding_layer_norm import used_ids
from .int8_linear import PackedInt8Weight
from .linear import PackedWeight, pack_weight

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ACTIVATION_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2}

_ISA_NAMES: tuple[str, ...] = tuple(_C.isa_names())  # compiled variants, best first
# What these kernels are built for beyond each op's contract (registry.limit_reason reads it)
LIMITS = {"attention": {"head_dim": _C.MAX_HEAD_DIM}}


def isa_variants() -> list[str]:
    """Every compiled ISA variant, best first (some may not run on this CPU)."""
    return list(_ISA_NAMES)


def _unsupported_reason(name: str) -> str:
    return _C.isa_unsupported_reason(_C.isa_code(name))


def supported_isas() -> list[str]:
    """The compiled variants this CPU (and OS) can run, best first; ``scalar`` is always last."""
    return [name for name in _ISA_NAMES if not _unsupported_reason(name)]


def _validated_isa(name: str) -> str:
    if name not in _ISA_NAMES:
        raise ValueError(f"unknown CPU ISA variant {name!r}; compiled variants: {list(_ISA_NAMES)}")
    reason = _unsupported_reason(name)
    if reason:
        raise ValueError(f"CPU ISA variant {name!r} is not supported here: {reason}; supported: {supported_isas()}")
    return name


def _default_isa() -> str:
    requested = os.environ.get("BERTRT_CPU_ISA")
    if requested:
        try:
            return _validated_isa(requested)
        except ValueError as exc:
            warnings.warn(f"ignoring BERTRT_CPU_ISA: {exc}", stacklevel=2)
    return supported_isas()[0]


_DEFAULT_ISA = _default_isa()
_forced_isa: contextvars.ContextVar[str | None] = contextvars.ContextVar("bertrt_cpu_isa", default=None)


def active_isa() -> str:
    """The variant the next call in this context runs: the forced one inside ``use_isa``, else the default."""
    return _forced_isa.get() or _DEFAULT_ISA


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[str]:
    """Force ISA variant ``name`` for the kernel calls in this scope (raises ValueError if unknown/unsupported)."""
    token = _forced_isa.set(_validated_isa(name))
    try:
        yield name
    finally:
        _forced_isa.reset(token)


_ISA_CODES = {name: _C.isa_code(name) for name in _ISA_NAMES}


def _isa_code() -> int:
    return _ISA_CODES[_forced_isa.get() or _DEFAULT_ISA]


_thread_budget: contextvars.ContextVar[Callable[[], int] | None] = contextvars.ContextVar(
    "bertrt_cpu_thread_budget", default=None)


@contextlib.contextmanager
def thread_budget(budget: Callable[[], int]) -> Iterator[None]:
    """Kernel calls in this scope use ``budget()`` threads instead of ``torch.get_num_threads()``.
    It is asked at every call, so concurrent inference workers can share the cores as they start
    and finish (the server's workers pass "cores / workers running now")."""
    token = _thread_budget.set(budget)
    try:
        yield
    finally:
        _thread_budget.reset(token)


def _threads() -> int:
    budget = _thread_budget.get()
    return torch.get_num_threads() if budget is None else max(1, int(budget()))


# ---- input checks ---------------------------------------------------------------------------------


def _require_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be on the CPU for the cpu kernels, got device {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got shape {tuple(t.shape)} with strides {t.stride()}")
    return t


def _require_float(name: str, t: torch.Tensor) -> int:
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    return code


def _require_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _params(dtype: torch.dtype, names: tuple[str, ...], tensors: tuple) -> tuple[int, tuple]:
    """Per-feature parameters share one dtype: the activations' dtype, else all go to float32."""
    same = True
    for name, t in zip(names, tensors):
        if t is not None:
            _require_tensor(name, t)
            _require_float(name, t)
            same = same and t.dtype == dtype
    if same:
        return _DTYPE_CODES[dtype], tensors
    return 0, tuple(None if t is None else t.float() for t in tensors)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ---- ops ------------------------------------------------------------------------------------------


def attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, *,
              rel_bias: torch.Tensor | None = None, window: int | None = None,
              rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """qkv: (total_tokens, 3, heads, head_dim) -> (total_tokens, heads, head_dim); head_dim <= 128.
    Options as in ``attention_ref``: rel_bias (heads, 2 * max_seqlen - 1) fp32, window, rotary (cos, sin)."""
    _require_tensor("qkv", qkv)
    _require_tensor("cu_seqlens", cu_seqlens)
    code = _require_float("qkv", qkv)
    _check_attention(qkv, cu_seqlens, max_seqlen, rel_bias, window, rotary)
    total, _, heads, head_dim = qkv.shape
    check_limits("cpu", LIMITS["attention"], head_dim=head_dim)
    if heads < 1:
        raise ValueError(f"qkv must have at least one head, got {tuple(qkv.shape)}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    cos = sin = None
    if rel_bias is not None:
        rel_bias = _require_tensor("rel_bias", rel_bias.float().contiguous())
    if rotary is not None:
        cos, sin = (_require_tensor(f"rotary {n}", t.float().contiguous()) for n, t in zip(("cos", "sin"), rotary))
    out = torch.empty((total, heads, head_dim), dtype=qkv.dtype)
    _C.attention(
        _isa_code(),
        qkv.data_ptr(),
        out.data_ptr(),
        cu_seqlens.data_ptr(),
        total,
        cu_seqlens.numel() - 1,
        heads,
        head_dim,
        scale,
        code,
        _threads(),
        _ptr(rel_bias),
        int(max_seqlen),
        -1 if window is None else int(window),
        _ptr(cos),
        _ptr(sin),
        0 if cos is None else cos.shape[0],
    )
    return out


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", *,
              gated: bool = False) -> torch.Tensor:
    """GELU(x + bias): x (tokens, features), bias (features,) or None; approximate "none" | "tanh".
    gated: GeGLU, (tokens, 2 * I) -> (tokens, I) = gelu(first half + bias) * (second half + bias)."""
    _require_tensor("x", x)
    code = _require_float("x", x)
    _check_bias_gelu(x, bias, approximate, gated)
    bias_code, (bias,) = _params(x.dtype, ("bias",), (bias,))
    out = torch.empty((x.shape[0], x.shape[1] // 2 if gated else x.shape[1]), dtype=x.dtype)
    _C.bias_gelu(
        _isa_code(),
        x.data_ptr(),
        _ptr(bias),
        out.data_ptr(),
        x.shape[0],
        x.shape[1],
        approximate == "tanh",
        bool(gated),
        code,
        bias_code,
        _threads(),
    )
    return out


def bias_residual_layer_norm(x, bias, residual, weight, beta, eps: float = 1e-12, *, return_sum: bool = False):
    """LayerNorm(x + bias + residual) * weight + beta: x, residual (tokens, hidden) (residual may be
    None); bias, beta (hidden,) or None; weight (hidden,). return_sum: (normed, x + bias + residual)."""
    _require_tensor("x", x)
    code = _require_float("x", x)
    _check_bias_residual_layer_norm(x, bias, residual, weight, beta)
    if residual is not None:
        _require_tensor("residual", residual)
        if residual.dtype != x.dtype:
            raise ValueError(f"residual must have x's dtype {x.dtype}, got {residual.dtype}")
    hidden = x.shape[1]
    if hidden < 1:
        raise ValueError(f"x must have hidden >= 1, got {tuple(x.shape)}")
    param_code, (bias, weight, beta) = _params(x.dtype, ("bias", "weight", "beta"), (bias, weight, beta))
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if return_sum else None
    _C.bias_residual_layer_norm(
        _isa_code(),
        x.data_ptr(),
        _ptr(residual),
        _ptr(bias),
        weight.data_ptr(),
        _ptr(beta),
        out.data_ptr(),
        _ptr(summed),
        x.shape[0],
        hidden,
        float(eps),
        code,
        param_code,
        _threads(),
    )
    return (out, summed) if return_sum else out


def embedding_layer_norm(
    input_ids,
    token_type_ids,
    position_ids,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    weight,
    bias,
    eps: float = 1e-12,
) -> torch.Tensor:
    """LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]) -> (tokens, hidden).
    position_embeddings / token_type_embeddings may be None (their ids are then ignored); bias may be None."""
    ids = used_ids(input_ids, token_type_ids, position_ids, position_embeddings, token_type_embeddings)
    for name, t in ids.items():
        _require_tensor(name, t)
    _require_tensor("word_embeddings", word_embeddings)
    if word_embeddings.dim() != 2:
        raise ValueError(f"word_embeddings must be (rows, hidden), got {tuple(word_embeddings.shape)}")
    _check_embedding_layer_norm(input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
                                token_type_embeddings)
    if len({t.dtype for t in ids.values()}) > 1:
        ids = {name: t.long() for name, t in ids.items()}
    input_ids = ids["input_ids"]
    token_type_ids, position_ids = ids.get("token_type_ids"), ids.get("position_ids")
    tables = {
        "word_embeddings": word_embeddings,
        "position_embeddings": position_embeddings,
        "token_type_embeddings": token_type_embeddings,
    }
    tables = {name: t for name, t in tables.items() if t is not None}
    code = _require_float("word_embeddings", word_embeddings)
    hidden = word_embeddings.shape[1]
    for name, t in tables.items():
        _require_tensor(name, t)
        if t.dtype != word_embeddings.dtype:
            raise ValueError(f"{name} must have word_embeddings' dtype {word_embeddings.dtype}, got {t.dtype}")
    if hidden < 1:
        raise ValueError(f"hidden size must be >= 1, got {tuple(word_embeddings.shape)}")
    if weight is None:
        raise ValueError("weight (the LayerNorm gamma) is required")
    _require_shape("weight", weight, (hidden,))
    if bias is not None:
        _require_shape("bias", bias, (hidden,))
    param_code, (weight, bias) = _params(word_embeddings.dtype, ("weight", "bias"), (weight, bias))
    tokens = input_ids.shape[0]
    out = torch.empty((tokens, hidden), dtype=word_embeddings.dtype)
    _C.embedding_layer_norm(
        _isa_code(),
        input_ids.data_ptr(),
        _ptr(token_type_ids),
        _ptr(position_ids),
        input_ids.dtype == torch.int64,
        word_embeddings.data_ptr(),
        word_embeddings.shape[0],
        _ptr(position_embeddings),
        0 if position_embeddings is None else position_embeddings.shape[0],
        _ptr(token_type_embeddings),
        0 if token_type_embeddings is None else token_type_embeddings.shape[0],
        weight.data_ptr(),
        _ptr(bias),
        out.data_ptr(),
        tokens,
        hidden,
        float(eps),
        code,
        param_code,
        _threads(),
    )
    return out


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32) -> torch.Tensor:
    """epilogue(x_q (tokens, K) int8 @ w_q (N, K) int8 ^T) with exact int32 accumulation -> (tokens, N)."""
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATION_CODES)}, got {activation!r}")
    for name, t in (("x_q", x_q), ("x_scale", x_scale), ("w_q", w_q), ("w_scale", w_scale)):
        _require_tensor(name, t)
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise ValueError(f"x_q and w_q must be int8, got {x_q.dtype} and {w_q.dtype}")
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"x_q (tokens, K) and w_q (N, K) must agree on K: {tuple(x_q.shape)} vs {tuple(w_q.shape)}")
    m, k = x_q.shape
    n = w_q.shape[0]
    if k < 1 or n < 1:
        raise ValueError(f"int8_linear needs K >= 1 and N >= 1, got x_q {tuple(x_q.shape)}, w_q {tuple(w_q.shape)}")
    _require_shape("x_scale", x_scale, (m,))
    _require_shape("w_scale", w_scale, (n,))
    if x_scale.dtype != torch.float32 or w_scale.dtype != torch.float32:
        raise ValueError(f"x_scale and w_scale must be float32, got {x_scale.dtype} and {w_scale.dtype}")
    bias_code = 0
    if bias is not None:
        _require_tensor("bias", bias)
        _require_shape("bias", bias, (n,))
        bias_code = _require_float("bias", bias)
    if out_dtype not in _DTYPE_CODES:
        raise ValueError(f"out_dtype must be float32, bfloat16 or float16, got {out_dtype}")
    out = torch.empty((m, n), dtype=out_dtype)
    _C.int8_linear(
        _isa_code(),
        x_q.data_ptr(),
        x_scale.data_ptr(),
        w_q.data_ptr(),
        w_scale.data_ptr(),
        _ptr(bias),
        out.data_ptr(),
        m,
        n,
        k,
        _ACTIVATION_CODES[activation],
        bias_code,
        _DTYPE_CODES[out_dtype],
        _threads(),
    )
    return out


def linear(x, weight, bias=None, activation="none") -> torch.Tensor:
    """act(x (tokens, K) @ weight^T + bias) in float32; weight (N, K) or a PackedWeight (see ops/linear.py)."""
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATION_CODES)}, got {activation!r}")
    if not isinstance(x, torch.Tensor) or not x.is_cpu:
        _require_tensor("x", x)  # raises, naming the problem
    if x.dim() == 2 and not (x.stride(1) == 1 and x.stride(0) >= x.shape[1]):
        x = x.contiguous()  # the kernel takes rows any distance apart, elements contiguous
    if not isinstance(weight, PackedWeight):
        _require_tensor("weight", weight)
        if bias is not None:
            _require_tensor("bias", bias)
        weight = pack_weight(weight, bias)
    elif bias is not None:
        raise ValueError("pass the bias to pack_weight, not with a PackedWeight")
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32 for the cpu linear, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != weight.in_features:
        raise ValueError(f"x must be (tokens, {weight.in_features}), got {tuple(x.shape)}")
    m, n = x.shape[0], weight.out_features
    out = torch.empty((m, n), dtype=torch.float32)
    _C.linear(
        _isa_code(),
        x.data_ptr(),
        weight.data.data_ptr(),
        _ptr(weight.bias),
        out.data_ptr(),
        m,
        n,
        weight.in_features,
        x.stride(0),
        n,
        _ACTIVATION_CODES[activation],
        _threads(),
    )
    return out


def int8_packed_kernel() -> str:
    """The inner loop ``int8_linear_packed`` runs in the active variant on this CPU: "avx512-vnni"
    (vpdpbusd), "avx2" (vpmaddubsw tiles; also the AVX-512 variant's on CPUs without VNNI) or "scalar"."""
    return _C.int8_packed_kernel(_isa_code())


def packed_weight_bits() -> int:
    """The weight width to pack for the active variant: 8 where its loop is vpdpbusd (exact for any
    int8 pair), 7 for the AVX2 tiles (whose int16 pair sums would saturate on 8-bit weights)."""
    return 8 if int8_packed_kernel() == "avx512-vnni" else 7


def int8_linear_packed(x, packed, activation="none", input_scale=None, input_zero_point=0, *,
                       multiplier=None, asymmetric=False) -> torch.Tensor:
    """x (tokens, K) float32 -> int8 GEMM with a PackedInt8Weight -> (tokens, N) float32; see
    ``bertrt.ops.int8_linear.int8_linear_packed_ref`` for the exact computation (``multiplier`` (K,):
    x * multiplier is quantized; ``asymmetric``: per-token zero points, dynamic 7-bit only)."""
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATION_CODES)}, got {activation!r}")
    if not isinstance(packed, PackedInt8Weight):
        raise ValueError(f"packed must be a PackedInt8Weight (pack_int8_weight), got {type(packed).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_cpu:
        _require_tensor("x", x)
    if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != packed.in_features:
        raise ValueError(f"x must be (tokens, {packed.in_features}) float32, got {tuple(x.shape)} {x.dtype}")
    if not (x.stride(1) == 1 and x.stride(0) >= x.shape[1]):
        x = x.contiguous()
    scale = None
    if input_scale is not None:
        if not float(input_scale) > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        scale = torch.tensor([float(input_scale)], dtype=torch.float32)
    if asymmetric and (input_scale is not None or packed.act_bits != 7):
        raise ValueError("asymmetric per-token activations are dynamic and 7-bit only")
    if multiplier is not None:
        _require_shape("multiplier", multiplier, (packed.in_features,))
        multiplier = multiplier.to(torch.float32).contiguous()
    m, n = x.shape[0], packed.out_features
    out = torch.empty((m, n), dtype=torch.float32)
    _C.int8_linear_packed(
        _isa_code(),
        x.data_ptr(),
        packed.data.data_ptr(),
        packed.col_sums.data_ptr(),
        packed.w_scale.data_ptr(),
        _ptr(packed.bias),
        _ptr(scale),
        int(input_zero_point),
        out.data_ptr(),
        m,
        n,
        packed.in_features,
        x.stride(0),
        _ACTIVATION_CODES[activation],
        packed.act_bits,
        _ptr(multiplier),
        bool(asymmetric),
        packed.weight_bits,
        _threads(),
    )
    return out


def fast_exp(x: torch.Tensor) -> torch.Tensor:
    """The kernels' vectorised exp on a float32 CPU tensor (exposed for accuracy tests)."""
    _require_tensor("x", x)
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32, got {x.dtype}")
    out = torch.empty_like(x)
    _C.vector_exp(_isa_code(), x.data_ptr(), out.data_ptr(), x.numel())
    return out
