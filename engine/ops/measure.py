"""Measured dispatch: every candidate implementation of every op is checked against its reference and
timed on this machine, and the results are cached, so the kernel plan (``bertrt.ops.plan``) only
ever picks an implementation that was seen to be correct and fast *here*.

Two kinds of record, both cached as JSON under ``<cache dir>/dispatch/<machine key>.json``:

* check:  (op, implementation, dtype) -> passed, max error, bound, or the exception it raised. Small
  awkward shapes (a 1-token sequence, odd lengths, 3 heads) against ``<op>_ref``; FP32 bounds are the
  tests' table plus the reference's own error on this ISA, BF16/FP16 bounds 2x PyTorch's own error.
  Attention is checked plain and with each option set a model family uses (``ATTENTION_OPTION_SETS``),
  so the implementation the plan picks is valid whichever options the model passes.
* timing: (op, implementation, dtype, shape) -> the best of a few runs after a warm-up.

The machine key covers the CPU model and flags, the GPU, and the bertrt and torch versions, so a new
build or a different CPU measures again. ``BERTRT_DISPATCH=off`` skips checking and timing (the plan
then uses the static preference order and says so).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import torch

from .. import paths
from .._version import __version__
from . import registry

log = logging.getLogger("bertrt.ops")

SCHEMA = 2  # 2: attention's check also runs its options (rel_bias, rotary, rotary + window)
REPEATS = 3
# Token counts the candidates are timed at; a batch takes the choice of the first bucket it fits in
# (the last bucket's beyond it).
BUCKETS = (64, 512, 2048)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Atol/rtol of an FP32 implementation against <op>_ref, before adding the reference's own error.
FP32_BOUND = {"attention": (1e-5, 1e-4), "bias_gelu": (1e-6, 1e-5), "bias_residual_layer_norm": (1e-5, 1e-5),
              "embedding_layer_norm": (1e-5, 1e-5), "linear": (1e-5, 1e-5)}
LOW_PRECISION_ATOL = {torch.bfloat16: 2e-3, torch.float16: 5e-4}


def enabled() -> bool:
    return os.environ.get("BERTRT_DISPATCH", "on").lower() not in ("off", "0", "false")


@functools.cache
def cpu_identity() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo (the platform's name and no flags elsewhere)."""
    cpu_model, flags = platform.processor() or "unknown", frozenset()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu_model = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return cpu_model, flags


@functools.cache
def build_identity() -> str:
    """A digest of the compiled extensions (bertrt._C, bertrt._cuda) as installed: a rebuilt kernel
    is checked and timed again even when the version string stayed the same."""
    digest = hashlib.sha256()
    for name in ("bertrt._C", "bertrt._cuda"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            digest.update(name.encode() + Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def machine_key(device: str) -> str:
    """What a measurement depends on: CPU model + flags (or the GPU), bertrt and torch versions, and
    the compiled extensions' bytes."""
    cpu_model, flags = cpu_identity()
    text = (f"{cpu_model}|{' '.join(sorted(flags))}|bertrt {__version__}|torch {torch.__version__}|"
            f"build {build_identity()}")
    if device == "cuda" and torch.cuda.is_available():
        text += f"|{torch.cuda.get_device_name()}|{torch.version.cuda}"
    return f"{device}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class Store:
    """The cached check and timing records of one machine key (thread-safe, written atomically)."""

    def __init__(self, device: str):
        self.device = device
        self.path = paths.cache_dir() / "dispatch" / f"{machine_key(device)}.json"
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("schema") == SCHEMA:
                self.records = raw.get("records", {})
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        with self._lock:
            self.records[key] = record

    def save(self) -> None:
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
                with os.fdopen(fd, "w") as handle:
                    json.dump({"schema": SCHEMA, "records": self.records}, handle, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError as exc:  # a read-only cache costs a re-measure next time, never a failure
                log.info("dispatch cache not written (%s): %s", self.path, exc)


_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def store(device: str) -> Store:
    with _STORES_LOCK:
        if device not in _STORES:
            _STORES[device] = Store(device)
        return _STORES[device]


def forget() -> None:
    """Drop the in-memory records (tests: a new cache dir, or a candidate registered again)."""
    with _STORES_LOCK:
        _STORES.clear()


# ---- inputs ---------------------------------------------------------------------------------------


# What a model family needs of an op beyond BERT's, as ``model_shape`` keys (``plan.model_shape_of``; absent
# = BERT's): gated (GeGLU MLP), prenorm (LayerNorm that also returns the residual sum), norm_bias=False
# (LayerNorms without beta), position_table / type_table=False (embeddings without those tables). A
# candidate is checked and timed with exactly what the model will ask of it.
FAMILY_OPTIONS = {"gated": False, "prenorm": False, "norm_bias": True, "position_table": True, "type_table": True}


def family_options(shape: dict) -> dict:
    """The model_shape keys that differ from BERT's defaults (empty for BERT itself)."""
    return {k: shape[k] for k, default in FAMILY_OPTIONS.items() if k in shape and shape[k] != default}


def options(op: str, shape: dict) -> dict:
    """The keyword-only options ``op`` is called with for a model of ``shape``."""
    if op == "bias_gelu" and shape.get("gated"):
        return {"gated": True}
    if op == "bias_residual_layer_norm" and shape.get("prenorm"):
        return {"return_sum": True}
    return {}


def inputs(op: str, dtype: torch.dtype, shape: dict, device: str, seed: int = 0) -> tuple:
    """Arguments for ``op`` (the signature of ``<op>_ref``) at ``shape``: tokens, hidden, heads,
    intermediate, lengths (attention), gelu ("none"/"tanh"), eps, and the FAMILY_OPTIONS keys (a gated
    bias_gelu takes 2 * intermediate features; beta / tables are None where the family has none)."""
    g = torch.Generator().manual_seed(seed)
    tokens, hidden = shape["tokens"], shape["hidden"]

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(dtype=dtype, device=device)

    if op == "attention":
        lengths = shape["lengths"]
        heads = shape["heads"]
        head_dim = hidden // heads
        cu = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)
        return rand(sum(lengths), 3, heads, head_dim), cu, max(lengths)
    with_beta = shape.get("norm_bias", True)
    if op == "bias_gelu":
        width = shape["intermediate"] * (2 if shape.get("gated") else 1)
        return rand(tokens, width, scale=2.0), rand(width), shape.get("gelu", "none")
    if op == "bias_residual_layer_norm":
        eps = shape.get("eps", 1e-12)
        beta = rand(hidden) if with_beta else None
        return rand(tokens, hidden), rand(hidden), rand(tokens, hidden), 1 + rand(hidden, scale=0.1), beta, eps
    if op == "embedding_layer_norm":
        vocab, positions = 997, max(tokens, 8)
        ids = torch.randint(0, vocab, (tokens,), generator=g).to(device)
        types = torch.randint(0, 2, (tokens,), generator=g).to(device)
        pos = torch.arange(tokens, device=device) % positions
        word, position, token_type = rand(vocab, hidden), rand(positions, hidden), rand(2, hidden)
        weight, beta = 1 + rand(hidden, scale=0.1), rand(hidden)
        if not shape.get("position_table", True):
            pos, position = None, None
        if not shape.get("type_table", True):
            types, token_type = None, None
        return (ids, types, pos, word, position, token_type, weight, beta if with_beta else None,
                shape.get("eps", 1e-12))
    if op == "linear":
        out_features, act = shape["intermediate"], "gelu_tanh" if shape.get("gelu") == "tanh" else "gelu"
        return rand(tokens, hidden), rand(out_features, hidden, scale=hidden**-0.5), rand(out_features), act
    raise ValueError(f"no measured inputs for op {op!r}")


def check_shape(op: str, model_shape: dict) -> dict:
    """Small awkward inputs with the model's widths: sequences of 1, 7 and 33 tokens."""
    lengths = [1, 7, 33]
    return {**model_shape, "tokens": sum(lengths), "lengths": lengths}


# ---- check ----------------------------------------------------------------------------------------


def _upcast(args: tuple, to: torch.dtype) -> tuple:
    return tuple(a.cpu().to(to) if isinstance(a, torch.Tensor) and a.is_floating_point() else
                 (a.cpu() if isinstance(a, torch.Tensor) else a) for a in args)


def _upcast_options(options: dict, to: torch.dtype) -> dict:
    """Keyword options with their tensors (also inside tuples: rotary's (cos, sin)) moved to ``to``."""
    return {k: _upcast(v, to) if isinstance(v, tuple) else
            (_upcast((v,), to)[0] if isinstance(v, torch.Tensor) else v) for k, v in options.items()}


# Attention's option sets in the self-check: MPNet's relative bias, ModernBERT's global (rotary) and
# local (rotary + a window narrower than the 33-token check sequence) layers.
ATTENTION_OPTION_SETS = ((), ("rel_bias",), ("rotary",), ("rotary", "window"))


def attention_options(names: tuple[str, ...], heads: int, head_dim: int, max_seqlen: int, device: str,
                      seed: int = 0, window: int = 5) -> dict:
    """Keyword options for attention (see ``attention_ref``): a random fp32 rel_bias, a rotary table with
    transformers' inverse frequencies (base 10000) and ``window``."""
    g = torch.Generator().manual_seed(seed)
    options: dict = {}
    if "rel_bias" in names:
        options["rel_bias"] = torch.randn(heads, 2 * max_seqlen - 1, generator=g).to(device)
    if "rotary" in names:
        inverse = 1.0 / 10000 ** (torch.arange(0, head_dim - head_dim % 2, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seqlen, dtype=torch.float32), inverse)
        options["rotary"] = (angles.cos().to(device), angles.sin().to(device))
    if "window" in names:
        options["window"] = window
    return options


def check(op: str, impl: str, dtype: torch.dtype, model_shape: dict, device: str) -> dict:
    """Run ``impl`` on small awkward inputs and compare with ``<op>_ref``: a record with passed,
    error, bound (and the exception text when it raised). Attention: the worst of its option sets."""
    if op != "attention":
        return _check_once(op, impl, dtype, model_shape, device, {})
    args = inputs(op, dtype, check_shape(op, model_shape), device, seed=7)
    heads, head_dim, max_seqlen = args[0].shape[2], args[0].shape[3], args[2]
    worst: dict = {}
    for names in ATTENTION_OPTION_SETS:
        if "rotary" in names and head_dim % 2:
            continue  # rotary needs an even head_dim: no model passes it here
        record = _check_once(op, impl, dtype, model_shape, device,
                             attention_options(names, heads, head_dim, max_seqlen, device))
        if names:
            record["options"] = "+".join(names)
        if not record["passed"]:
            return record
        if not worst or record["error"] > worst["error"]:
            worst = record
    return worst


def _check_once(op: str, impl: str, dtype: torch.dtype, model_shape: dict, device: str, extra: dict) -> dict:
    """``extra``: keyword options besides the family's (attention's rel_bias / rotary / window sets)."""
    shape = check_shape(op, model_shape)
    args = inputs(op, dtype, shape, device, seed=7)
    kwargs = {**options(op, shape), **extra}
    try:
        outs = _outputs(registry.resolve(op, impl)(*args, **kwargs))
        exacts = [e.float() for e in _outputs(registry.resolve(op, "ref")(*_upcast(args, torch.float32),
                                                                           **_upcast_options(kwargs, torch.float32)))]
        if len(outs) != len(exacts):
            return {"passed": False, "error": f"{len(outs)} outputs, expected {len(exacts)}"}
        outs = [o.float().cpu() for o in outs]
        for out, exact in zip(outs, exacts):
            if out.shape != exact.shape:
                return {"passed": False, "error": f"shape {tuple(out.shape)}, expected {tuple(exact.shape)}"}
            if not torch.isfinite(out).all():
                return {"passed": False, "error": "non-finite values"}
        errors = [(out - exact).abs() for out, exact in zip(outs, exacts)]
        worst = max(float(e.max()) for e in errors)
        if dtype == torch.float32:
            atol, rtol = FP32_BOUND.get(op, (1e-5, 1e-5))
            own = _reference_error(op, args, kwargs, exacts)
            bounds = [atol + own + rtol * exact.abs() for exact in exacts]
            passed = all(bool((e <= b).all()) for e, b in zip(errors, bounds))
            return {"passed": passed, "error": worst, "bound": min(float(b.min()) for b in bounds),
                    "reference_error": own}
        torch_outs = _outputs(registry.resolve(op, "torch")(*_upcast(args, dtype), **kwargs))  # tables stay fp32
        torch_error = max(float((t.float() - e).abs().max()) for t, e in zip(torch_outs, exacts))
        bound = 2.0 * torch_error + LOW_PRECISION_ATOL[dtype]
        return {"passed": worst <= bound, "error": worst, "bound": bound}
    except Exception as exc:  # a crash disables the candidate; it must not stop the load
        return {"passed": False, "error": f"{type(exc).__name__}: {exc}"}


def _outputs(result) -> list[torch.Tensor]:
    """An op's result as a list of tensors (return_sum=True gives two)."""
    return list(result) if isinstance(result, tuple) else [result]


def _reference_error(op: str, args: tuple, kwargs: dict, exacts: list[torch.Tensor]) -> float:
    """How far the fp32 reference itself is from a float64 evaluation of the op on this machine:
    the part of an FP32 kernel's error that no kernel can avoid (it moves with torch's ISA path)."""
    try:
        truths = _outputs(registry.resolve(op, "torch")(*_upcast(args, torch.float64),
                                                        **_upcast_options(kwargs, torch.float64)))
        return max(float((e.double() - t.double()).abs().max()) for e, t in zip(exacts, truths))
    except Exception:  # an op without a float64 path: the table bound alone
        return 0.0


# ---- timing ---------------------------------------------------------------------------------------


def best_seconds(fn: Callable[[], object], min_repeats: int = REPEATS, max_repeats: int = 9,
                 budget_s: float = 0.05) -> float:
    """The fastest of several runs after a warm-up. The minimum, not the median: a candidate's own
    cost is what the choice compares, and on a shared machine the slower runs measure the neighbours.
    Runs at least ``min_repeats`` times, more (up to ``max_repeats``) while under ``budget_s``."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up: first-call allocation, weight packing, oneDNN primitive creation
    sync()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - begin < budget_s):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def time_op(op: str, impl: str, dtype: torch.dtype, shape: dict, device: str) -> float:
    args = inputs(op, dtype, shape, device)
    kwargs = options(op, shape)
    fn = registry.resolve(op, impl)
    return best_seconds(lambda: fn(*args, **kwargs))


def shape_key(shape: dict) -> str:
    return ",".join(f"{k}={shape[k]}" for k in sorted(shape) if k != "lengths") + (
        f",lengths={_lengths_signature(shape['lengths'])}" if "lengths" in shape else "")


def _lengths_signature(lengths: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, lengths)).encode()).hexdigest()[:8] + f"x{len(lengths)}"


def checked(op: str, impl: str, precision: str, model_shape: dict, device: str) -> dict:
    """The cached check record of (op, impl, precision), made now when missing."""
    s = store(device)
    key = f"check|{op}|{impl}|{precision}|h{model_shape['hidden']}|n{model_shape['heads']}"
    family = family_options(model_shape)
    if family:  # a family's options are part of what was checked (BERT's keys stay as they were)
        key += "|" + ",".join(f"{k}={v}" for k, v in sorted(family.items()))
    record = s.get(key)
    if record is None:
        record = check(op, impl, DTYPES[precision], model_shape, device)
        s.put(key, record)
        if not record["passed"]:
            warnings.warn(f"bertrt: {op} implementation {impl!r} failed its self-check on this machine "
                          f"({precision}: {record['error']}); it is disabled here", stacklevel=3)
    return record


def timed(op: str, impl: str, precision: str, shape: dict, device: str) -> float:
    s = store(device)
    key = f"time|{op}|{impl}|{precision}|{shape_key(shape)}"
    record = s.get(key)
    if record is None:
        seconds = time_op(op, impl, DTYPES[precision], shape, device)
        record = {"seconds": seconds if math.isfinite(seconds) else float("inf")}
        s.put(key, record)
    return record["seconds"]


def cache_path(device: str) -> Path:
    return store(device).path
