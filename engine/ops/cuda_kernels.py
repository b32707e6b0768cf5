"""torch glue for the CUDA C++ kernels in ``bertrt._cuda`` (``csrc/cuda``).

One function per op, with exactly the signature of ``<op>_ref``. Each one validates its tensors (CUDA, one
device, contiguous, one floating dtype among float32 / float16 / bfloat16), allocates the output with
torch and enqueues the kernel on the current torch stream of the tensors' device; nothing synchronizes
except the id range check of ``embedding_layer_norm``, which the op contract requires.

Numerics: every kernel computes in fp32 and rounds once to the output dtype, except attention on tensor
cores (fp16 on sm_75+, bf16 on sm_80+), whose softmax probabilities are rounded to the input dtype before
the P @ V product, as in FlashAttention. bf16 attention on sm_75 and fp32 attention run the fp32 SIMT
kernel. See csrc/cuda/README.md.
"""

from __future__ import annotations

import math

import torch

from .. import _cuda
from ..errors import check_limits
from .attention import _check as _check_attention
from .bias_gelu import _check as _check_bias_gelu
from .bias_residual_layer_norm import _check as _check_bias_residual_layer_norm
from .embedding_layer_norm import _check as _check_embedding_layer_norm
from .embedding_layer_norm import used_ids

_FLOAT_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_ID_DTYPES = {torch.int32: "int32", torch.int64: "int64"}
MAX_HEAD_DIM = 128
# What these kernels are built for beyond each op's contract (registry.limit_reason reads it)
LIMITS = {"attention": {"head_dim": MAX_HEAD_DIM}}
ATTENTION_PATHS = ("auto", "mma", "simt")


def _validate(op: str, tensors: dict[str, torch.Tensor | None], dtype: torch.dtype | None = None) -> torch.device:
    """All given tensors: torch.Tensor on one CUDA device, contiguous, and (if dtype) of that dtype."""
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cuda":
            raise ValueError(f"{op}: {name} must be a CUDA tensor, got one on {t.device}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but the other tensors are on {device}")
        if dtype is not None and t.dtype != dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, expected {dtype} like the other inputs")
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (call .contiguous() first)")
    assert device is not None
    return device


def _float_dtype(op: str, name: str, t: torch.Tensor) -> str:
    try:
        return _FLOAT_DTYPES[t.dtype]
    except KeyError:
        raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}") from None


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def attention(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, *,
    rel_bias: torch.Tensor | None = None, window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Variable-length attention over packed sequences (see ``attention_ref``), head_dim <= 128, with the
    rel_bias / window / rotary options (unverified on a GPU)."""
    return attention_with_path(qkv, cu_seqlens, max_seqlen, scale, path="auto", rel_bias=rel_bias, window=window,
                               rotary=rotary)


def attention_with_path(
    qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float | None = None, path: str = "auto",
    *, rel_bias: torch.Tensor | None = None, window: int | None = None,
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attention`` with the kernel named: "auto", "mma" (tensor cores: fp16 on sm_75+, bf16 on sm_80+) or
    "simt" (fp32 CUDA-core math, any dtype). For tests and benchmarks."""
    op = "attention"
    if path not in ATTENTION_PATHS:
        raise ValueError(f"{op}: path must be one of {ATTENTION_PATHS}, got {path!r}")
    _check_attention(qkv, cu_seqlens, max_seqlen, rel_bias, window, rotary)
    dtype = _float_dtype(op, "qkv", qkv)
    cos, sin = rotary if rotary is not None else (None, None)
    rel_bias, cos, sin = (None if t is None else t.contiguous() for t in (rel_bias, cos, sin))
    device = _validate(op, {"qkv": qkv, "cu_seqlens": cu_seqlens})
    _validate(op, {"qkv": qkv, "rel_bias": rel_bias, "rotary cos": cos, "rotary sin": sin})
    total, _, heads, head_dim = qkv.shape
    check_limits("cuda", LIMITS["attention"], head_dim=head_dim)
    max_seqlen = int(max_seqlen)
    if max_seqlen < 0:
        raise ValueError(f"{op}: max_seqlen must be >= 0, got {max_seqlen}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty(total, heads, head_dim, dtype=qkv.dtype, device=device)
    if total == 0 or heads == 0 or head_dim == 0:
        return out
    with torch.cuda.device(device):
        _cuda.attention(
            qkv.data_ptr(), cu_seqlens.data_ptr(), out.data_ptr(), cu_seqlens.numel() - 1, heads, head_dim,
            max_seqlen, scale, dtype, torch.cuda.current_stream(device).cuda_stream, path,
            _ptr(rel_bias), max_seqlen, -1 if window is None else int(window), _ptr(cos), _ptr(sin),
        )
    return out


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", *,
              gated: bool = False) -> torch.Tensor:
    """GELU(x + bias), exact or tanh; gated: GeGLU (tokens, 2 * I) -> (tokens, I) (see ``bias_gelu_ref``).
    Unverified on a GPU (compiled for sm_75..90)."""
    op = "bias_gelu"
    _check_bias_gelu(x, bias, approximate, gated)
    dtype = _float_dtype(op, "x", x)
    device = _validate(op, {"x": x, "bias": bias}, x.dtype)
    out = torch.empty((x.shape[0], x.shape[1] // 2 if gated else x.shape[1]), dtype=x.dtype, device=device)
    if out.numel() == 0:
        return out
    with torch.cuda.device(device):
        _cuda.bias_gelu(
            x.data_ptr(), _ptr(bias), out.data_ptr(), x.shape[0], x.shape[1], approximate, dtype,
            torch.cuda.current_stream(device).cuda_stream, bool(gated),
        )
    return out


def bias_residual_layer_norm(x, bias, residual, weight, beta, eps: float = 1e-12, *, return_sum: bool = False):
    """LayerNorm(x + bias + residual) with fp32 statistics; residual, bias, beta may be None; return_sum:
    (normed, summed) (see ``bias_residual_layer_norm_ref``). The options are unverified on a GPU."""
    op = "bias_residual_layer_norm"
    _check_bias_residual_layer_norm(x, bias, residual, weight, beta)
    dtype = _float_dtype(op, "x", x)
    device = _validate(
        op, {"x": x, "bias": bias, "residual": residual, "weight": weight, "beta": beta}, x.dtype
    )
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if return_sum else None
    if x.numel() > 0:
        with torch.cuda.device(device):
            _cuda.bias_residual_layer_norm(
                x.data_ptr(), _ptr(bias), _ptr(residual), weight.data_ptr(), _ptr(beta), out.data_ptr(),
                x.shape[0], x.shape[1], float(eps), dtype, torch.cuda.current_stream(device).cuda_stream,
                _ptr(summed),
            )
    return (out, summed) if return_sum else out


def embedding_layer_norm(
    input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings,
    token_type_embeddings, weight, bias, eps: float = 1e-12,
) -> torch.Tensor:
    """LayerNorm of the summed embeddings (see ``embedding_layer_norm_ref``); the position / token-type
    tables and bias may be None (their ids are then ignored; unverified on a GPU). Out-of-range ids raise
    ValueError (this check reads the ids' min and max, a device synchronization)."""
    op = "embedding_layer_norm"
    ids = used_ids(input_ids, token_type_ids, position_ids, position_embeddings, token_type_embeddings)
    for name, t in ids.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a tensor of ids when its table is given, got {type(t).__name__}")
    tables = {
        "word_embeddings": word_embeddings, "position_embeddings": position_embeddings,
        "token_type_embeddings": token_type_embeddings, "weight": weight, "bias": bias,
    }
    tables = {name: t for name, t in tables.items() if t is not None}
    if "weight" not in tables:
        raise ValueError(f"{op}: weight (the LayerNorm gamma) is required")
    for name, t in tables.items():
        if t.dim() != (1 if name in ("weight", "bias") else 2):
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}")
    hidden = word_embeddings.shape[1]
    for name, t in tables.items():
        if t.shape[-1] != hidden:
            raise ValueError(f"{op}: {name} must have {hidden} columns like word_embeddings, got {tuple(t.shape)}")
    dtype = _float_dtype(op, "word_embeddings", word_embeddings)
    device = _validate(op, tables, word_embeddings.dtype)
    if _validate(op, ids) != device:
        raise ValueError(f"{op}: the ids must be on {device} like the embedding tables")
    _check_embedding_layer_norm(
        input_ids, token_type_ids, position_ids, word_embeddings, position_embeddings, token_type_embeddings
    )
    tokens = input_ids.shape[0]
    out = torch.empty(tokens, hidden, dtype=word_embeddings.dtype, device=device)
    if tokens == 0:
        return out
    token_type_ids, position_ids = ids.get("token_type_ids"), ids.get("position_ids")
    with torch.cuda.device(device):
        _cuda.embedding_layer_norm(
            input_ids.data_ptr(), _ID_DTYPES[input_ids.dtype],
            _ptr(token_type_ids), _ID_DTYPES[token_type_ids.dtype] if token_type_ids is not None else "int64",
            _ptr(position_ids), _ID_DTYPES[position_ids.dtype] if position_ids is not None else "int64",
            word_embeddings.data_ptr(), word_embeddings.shape[0],
            _ptr(position_embeddings), 0 if position_embeddings is None else position_embeddings.shape[0],
            _ptr(token_type_embeddings), 0 if token_type_embeddings is None else token_type_embeddings.shape[0],
            weight.data_ptr(), _ptr(bias), out.data_ptr(), tokens, hidden, float(eps), dtype,
            torch.cuda.current_stream(device).cuda_stream,
        )
    return out


__all__ = [
    "ATTENTION_PATHS", "MAX_HEAD_DIM", "attention", "attention_with_path", "bias_gelu",
    "bias_residual_layer_norm", "embedding_layer_norm",
]
