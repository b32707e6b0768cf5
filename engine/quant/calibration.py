"""Calibration for static INT8: observe the inputs of every linear to be quantized, then derive one
activation scale (and zero point) per linear with minmax, percentile or entropy (KL divergence).

Pass 1 records per-input-channel min and max (all SmoothQuant needs, and the exact range of the
smoothed activations). Percentile and entropy run a second pass that fills 2048-bin histograms of
x and |x| (after SmoothQuant's per-channel division) over that range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..batching import PackedBatch, pack, plan_batches
from ..errors import InputError
from ..ops.plan import KernelPlan


@dataclass
class ChannelStats:
    """Per-input-channel min/max of one linear's input, plus optional histograms."""

    cmin: torch.Tensor | None = None  # (K,)
    cmax: torch.Tensor | None = None  # (K,)
    count: int = 0
    multiplier: torch.Tensor | None = None  # (K,) SmoothQuant's 1/s, applied before the histograms
    lo: float = 0.0
    hi: float = 0.0
    hist: torch.Tensor | None = None  # signed, over [lo, hi]
    abs_hist: torch.Tensor | None = None  # |x| over [0, max(|lo|, |hi|)]

    def update_minmax(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        if x.shape[0] == 0:
            return
        mn, mx = x.amin(0), x.amax(0)
        self.cmin = mn if self.cmin is None else torch.minimum(self.cmin, mn)
        self.cmax = mx if self.cmax is None else torch.maximum(self.cmax, mx)
        self.count += x.shape[0]

    def start_histograms(self, bins: int) -> None:
        m = self.multiplier if self.multiplier is not None else torch.ones_like(self.cmin)
        a, b = self.cmin * m, self.cmax * m  # m > 0: exact range of the scaled channels
        self.lo = min(float(torch.minimum(a, b).min()), 0.0)
        self.hi = max(float(torch.maximum(a, b).max()), 0.0)
        if self.hi - self.lo <= 0:
            self.hi = self.lo + 1e-8
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.abs_hist = torch.zeros(bins, dtype=torch.float64)

    def update_histograms(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        if self.multiplier is not None:
            x = x * self.multiplier
        bins = self.hist.numel()
        self.hist += torch.histc(x, bins, self.lo, self.hi).double().cpu()
        self.abs_hist += torch.histc(x.abs(), bins, 0.0, self.amax).double().cpu()

    @property
    def amax(self) -> float:
        return max(abs(self.lo), abs(self.hi), 1e-8)

    def absmax_per_channel(self) -> torch.Tensor:
        return torch.maximum(self.cmin.abs(), self.cmax.abs())


def smoothquant_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), per input channel j, clamped to
    [1e-5, 1e5]; channels never active keep s = 1."""
    w_absmax = weight.detach().float().abs().amax(0).clamp_min(1e-5)
    a = act_absmax.float().clamp_min(1e-5)
    s = a.pow(alpha) / w_absmax.pow(1.0 - alpha)
    s = torch.where(act_absmax > 0, s, torch.ones_like(s))
    return s.clamp(1e-5, 1e5)


def _quantile(hist: np.ndarray, lo: float, hi: float, q: float) -> float:
    """The q-quantile (0..1) of a histogram over [lo, hi], by linear interpolation in the bin."""
    total = hist.sum()
    if total <= 0:
        return hi
    cdf = np.cumsum(hist) / total
    i = int(np.searchsorted(cdf, q))
    i = min(i, len(hist) - 1)
    width = (hi - lo) / len(hist)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if hist[i] == 0 else (q - before) / (cdf[i] - before)
    return lo + (i + min(max(frac, 0.0), 1.0)) * width


def entropy_threshold(hist: np.ndarray, amax: float, levels: int = 128, max_steps: int = 512) -> float:
    """TensorRT's calibration: the |x| threshold whose clipped-and-quantized distribution has the
    least KL divergence from the observed one (levels = 128 for symmetric int8)."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = len(hist)
    width = amax / bins
    if hist.sum() <= 0:
        return amax
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    stride = max(1, (bins - levels) // max_steps)
    best_kl, best_i = math.inf, bins
    for i in range(levels, bins + 1, stride):
        p = hist[:i].copy()
        p[-1] += tail[i]
        nz = hist[:i] > 0
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        starts = edges[:-1]
        sizes = np.diff(edges)
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nz.astype(np.float64), starts)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1.0), 0.0)
        q = np.where(nz, np.repeat(mean, sizes), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            continue
        p, q = p / ps, q / qs
        mask = p > 0
        if np.any(q[mask] == 0):
            continue
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def activation_qparams(stats: ChannelStats, method: str, symmetric: bool, percentile: float) -> tuple[float, int]:
    """(scale, zero_point) for x_q = clamp(round(x / scale) + zero_point, -128, 127)."""
    m = stats.multiplier if stats.multiplier is not None else torch.ones_like(stats.cmin)
    a, b = stats.cmin * m, stats.cmax * m
    lo = min(float(torch.minimum(a, b).min()), 0.0)
    hi = max(float(torch.maximum(a, b).max()), 0.0)
    if method == "percentile":
        if symmetric:
            t = _quantile(stats.abs_hist.numpy(), 0.0, stats.amax, percentile / 100.0)
            lo, hi = -t, t
        else:
            hist = stats.hist.numpy()
            lo = min(_quantile(hist, stats.lo, stats.hi, 1.0 - percentile / 100.0), 0.0)
            hi = max(_quantile(hist, stats.lo, stats.hi, percentile / 100.0), 0.0)
    elif method == "entropy":
        t = entropy_threshold(stats.abs_hist.numpy(), stats.amax)
        lo, hi = max(lo, -t), min(hi, t)
        if symmetric:
            lo, hi = -t, t
    if symmetric:
        amax = max(abs(lo), abs(hi), 1e-8)
        return amax / 127.0, 0
    span = max(hi - lo, 1e-8)
    scale = span / 255.0
    zero_point = int(round(-128.0 - lo / scale))
    return scale, max(-128, min(127, zero_point))


# -- running calibration data through a model ---------------------------------------------------------


def read_texts(path: str | Path, what: str = "calibration file") -> tuple[list[str], list | None]:
    """Texts (and labels, when every JSON line has a "label") from a file of one text per line or JSON
    lines with a "text" field. Raises InputError naming the file when it is missing, unreadable, empty
    or malformed."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read: {exc}") from None
    texts, labels = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{what} {path}, line {number}: invalid JSON: {exc}") from None
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{what} {path}, line {number}: JSON object without a non-empty 'text' field")
            texts.append(text)
            labels.append(record.get("label"))
        else:
            texts.append(line)
            labels.append(None)
    if not texts:
        raise InputError(f"{what} {path} is empty: it needs at least one non-blank line of text")
    return texts, (labels if all(label is not None for label in labels) else None)


def text_batches(texts: list[str], tokenizer, batch_tokens: int = 4096, max_sequences: int = 64) -> list[PackedBatch]:
    """Tokenize (truncating to the tokenizer's max_length) and pack into padding-free batches."""
    if tokenizer is None:
        raise InputError("calibration texts need a tokenizer: pass a Checkpoint/Engine or tokenizer=")
    encodings = tokenizer.encode_batch(list(texts), "truncate")
    ids = [e.ids for e in encodings]
    types = [e.type_ids for e in encodings]
    groups = plan_batches([len(x) for x in ids], batch_tokens, max_sequences)
    return [pack([ids[i] for i in g], [types[i] for i in g], g) for g in groups]


def as_batches(data, tokenizer, batch_tokens: int = 4096) -> list[PackedBatch]:
    """Calibration data as packed batches: a list of texts, or of PackedBatch."""
    if isinstance(data, (str, Path)):
        data, _ = read_texts(data)
    data = list(data)
    if not data:
        raise InputError("calibration data is empty: static INT8 needs at least one text")
    if all(isinstance(d, str) for d in data):
        if not any(d.strip() for d in data):
            raise InputError("calibration texts are all blank")
        return text_batches(data, tokenizer, batch_tokens)
    if all(isinstance(d, PackedBatch) for d in data):
        return data
    raise InputError("calibration data must be texts (list of str) or bertrt.batching.PackedBatch objects")


@torch.inference_mode()
def run_batches(model: nn.Module, batches: list[PackedBatch], progress: bool = False,
                desc: str = "calibrating") -> None:
    device = next(model.parameters()).device
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        b = batch.to(device)
        model.forward_packed(b.input_ids, b.cu_seqlens, b.max_seqlen, b.token_type_ids, task=model.config.task)


@dataclass
class Calibrator:
    """Hooks on the inputs of the named linears of ``model``."""

    model: nn.Module
    names: list[str]
    stats: dict[str, ChannelStats] = field(default_factory=dict)

    def _observe(self, fn: Callable[[ChannelStats, torch.Tensor], None], batches, progress, desc) -> None:
        modules = dict(self.model.named_modules())
        handles = []
        for name in self.names:
            stats = self.stats.setdefault(name, ChannelStats())
            handles.append(modules[name].register_forward_pre_hook(
                lambda _m, args, s=stats: fn(s, args[0])))
        # An engine's kernel plan runs bertrt's packed GEMM on the linears' weights without calling the
        # modules, so their hooks would never fire: calibrate under the static plan (F.linear through
        # each module), then give the engine its plan back.
        encoder = getattr(self.model, "encoder", None)
        planned = getattr(encoder, "plan", None)
        if planned is not None:
            encoder.plan = KernelPlan(device=planned.device, precision=planned.precision)
        try:
            run_batches(self.model, batches, progress, desc)
        finally:
            for h in handles:
                h.remove()
            if planned is not None:
                encoder.plan = planned

    def collect_minmax(self, batches: Iterable[PackedBatch], progress: bool = False) -> None:
        self._observe(ChannelStats.update_minmax, batches, progress, "calibrating (range)")
        never = [n for n in self.names if self.stats[n].cmin is None]
        if never:
            raise InputError(f"calibration never reached {never[:3]} (does the data run the model's head?)")

    def collect_histograms(self, batches: Iterable[PackedBatch], bins: int, progress: bool = False) -> None:
        for name in self.names:
            self.stats[name].start_histograms(bins)
        self._observe(ChannelStats.update_histograms, batches, progress, "calibrating (histograms)")
