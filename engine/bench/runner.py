"""Running a bench: warm-up, timed repetitions, fidelity against the FP32 reference.

Timing: ``warmup`` untimed calls, then ``repeats`` calls each timed with ``time.perf_counter``
(stopping early, after at least 3, once a row has spent ``max_seconds``); median and p90 in ms.
Threads: torch.set_num_threads, ONNX Runtime intra_op_num_threads and OpenVINO
INFERENCE_NUM_THREADS all get ``threads`` (default: the cores this process may use).
Fidelity: cosine between each sequence's pooled embedding (the checkpoint's pooling over real tokens)
and the FP32 reference's (transformers FP32 when installed, else bertrt FP32); mean and min per row.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bertrt
import numpy as np
import torch
from tqdm import tqdm

from ..model.config import EncoderConfig
from ..model.loader import read_pooling
from ..runtime import probe
from . import peers as peers_mod
from .shapes import BenchInputs, ShapeSpec, make_inputs

COLUMNS = ("model", "shape", "engine", "precision", "median_ms", "p90_ms", "min_ms", "cpu_ms", "repeats",
           "tokens_per_s", "vs_best_peer", "cpu_vs_best_peer", "best_peer", "fidelity_mean", "fidelity_min", "peer")


@dataclass
class BenchConfig:
    model_dir: Path
    model_name: str
    shapes: list[ShapeSpec]
    precisions: list[str]
    peers: list[str]
    repeats: int = 20
    warmup: int = 3
    threads: int = 0  # 0: all cores this process may use
    max_seconds: float = 60.0
    cache_dir: Path = Path.home() / ".cache" / "bertrt" / "bench"
    seed: int = 0
    e2e: bool = False
    kernels: str = "auto"
    more_kernels: tuple[str, ...] = ()  # further kernel settings, each a set of "bertrt[kernels=...]" rows
    interleave: bool = False  # time the subjects of a shape in rounds (a turn each) instead of one by one
    device: str = "cpu"  # "cuda[:N]": GPU rows, timed with a device synchronize after each call


@dataclass
class Row:
    model: str
    shape: str
    engine: str
    precision: str
    median_ms: float
    p90_ms: float
    min_ms: float
    cpu_ms: float  # median CPU time of the process per call (all threads)
    repeats: int
    tokens_per_s: float
    vs_best_peer: float | None = None
    cpu_vs_best_peer: float | None = None  # the same ratio on CPU time (per-call process CPU time)
    best_peer: str | None = None
    fidelity_mean: float | None = None
    fidelity_min: float | None = None
    peer: bool = True
    times_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class BenchResult:
    rows: list[Row]
    meta: dict[str, Any]

    def to_dict(self) -> dict:
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, max_seconds: float = float("inf"),
               cpu_times: list[float] | None = None):
    """(wall times in seconds, last output); the process CPU time of each call is appended to
    ``cpu_times`` when given (with one thread on a busy machine it is the steadier number: it does not
    count the time the scheduler gave to other processes)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times: list[float] = []
    spent = 0.0
    for _ in range(max(repeats, 1)):
        cpu_start = time.process_time()
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
        times.append(elapsed)
        spent += elapsed
        if spent > max_seconds and len(times) >= 3:
            break
    return times, out


def summarize(times: list[float]) -> tuple[float, float, float]:
    """(median, p90, min) in ms."""
    ms = np.asarray(times) * 1e3
    return float(statistics.median(ms)), float(np.percentile(ms, 90)), float(ms.min())


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def versions() -> dict[str, str | None]:
    out = {"bertrt": bertrt.__version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "onnxruntime", "openvino", "onnx", "numpy"):
        found = peers_mod.version(name)
        out[name] = found.split("-")[0] if found else None  # openvino: "2026.4.1-22982-<hash>-releases/..."
    return out


def machine(threads: int) -> dict[str, Any]:
    cpu = probe.cpu()
    return {"cpu_model": cpu.model, "isa": cpu.isa, "cores": cpu.cores, "threads": threads,
            "native_bf16": cpu.native_bf16, "features": sorted(cpu.flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_start": list(os.getloadavg())}


def subjects_for(config: BenchConfig) -> list[peers_mod.Subject]:
    subjects: list[peers_mod.Subject] = []
    for i, kernels in enumerate((config.kernels, *config.more_kernels)):
        subjects += [peers_mod.Bertrt(p, kernels, labelled=i > 0) for p in config.precisions]
        if config.e2e:
            subjects += [peers_mod.BertrtEndToEnd(p, kernels, labelled=i > 0) for p in config.precisions]
    subjects += [peers_mod.make_peer(name) for name in config.peers]
    return subjects


def run_bench(config: BenchConfig, log: Callable[[str], None] = print, progress: bool = True) -> BenchResult:
    threads = config.threads or probe.cpu().cores
    torch.set_num_threads(threads)
    encoder_config = EncoderConfig.from_file(config.model_dir / "config.json")
    pooling, _, _ = read_pooling(config.model_dir)
    ctx = peers_mod.Context(model_dir=config.model_dir, threads=threads, cache_dir=Path(config.cache_dir),
                            pooling=pooling, num_heads=encoder_config.num_attention_heads,
                            hidden_size=encoder_config.hidden_size, log=log, device=config.device)
    inputs = {spec.name: make_inputs(spec, config.model_dir / "vocab.txt", config.seed,
                                     encoder_config.max_position_embeddings) for spec in config.shapes}
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": config.model_name, "model_dir": str(config.model_dir),
        "layers": encoder_config.num_hidden_layers, "hidden": encoder_config.hidden_size,
        "shapes": {name: {"lengths": inp.lengths, "tokens": inp.tokens,
                          "padded_tokens": int(inp.input_ids.numel())} for name, inp in inputs.items()},
        "repeats": config.repeats, "warmup": config.warmup, "max_seconds": config.max_seconds, "seed": config.seed,
        "machine": machine(threads), "versions": versions(), "skipped": {}, "notes": {}, "device": config.device,
    }
    if config.device.startswith("cuda"):
        meta["machine"]["gpu"] = torch.cuda.get_device_name(torch.device(config.device))

    # The FP32 reference: transformers when installed (independent of bertrt), else bertrt FP32.
    reference: peers_mod.Subject = peers_mod.Transformers("fp32")
    if reference.available():
        reference = peers_mod.Bertrt("fp32", config.kernels)
    reference.prepare(ctx)
    reference_embeddings = {name: reference.embed(inp, reference.run(inp)).float() for name, inp in inputs.items()}
    meta["reference"] = reference.label
    del reference
    gc.collect()

    subjects = subjects_for(config)
    run = _run_interleaved if config.interleave else _run_one_by_one
    rows = run(subjects, inputs, reference_embeddings, config, ctx, meta, log, progress)
    meta["interleaved"] = config.interleave
    order = {spec.name: i for i, spec in enumerate(config.shapes)}
    rows.sort(key=lambda r: order[r.shape])  # stable: subjects keep their order within a shape
    _ratios(rows)
    meta["machine"]["loadavg_end"] = list(os.getloadavg())
    return BenchResult(rows, meta)


def _prepare(subject: peers_mod.Subject, ctx: peers_mod.Context, meta: dict, log, bar) -> bool:
    """True when ``subject`` runs here; else the reason goes into meta["skipped"]."""
    reason = subject.available()
    if reason is None:
        try:
            bar.set_description(f"{subject.label}: preparing")
            subject.prepare(ctx)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            reason = f"prepare failed: {type(exc).__name__}: {exc}"
    if reason:
        meta["skipped"][subject.label] = reason
        log(f"skipped {subject.label}: {reason}")
        return False
    if subject.notes:
        meta["notes"][subject.label] = subject.notes
    return True


def _run_one_by_one(subjects, inputs, reference_embeddings, config, ctx, meta, log, progress) -> list[Row]:
    """Each subject is prepared, timed on every shape and released before the next (one model in memory)."""
    rows: list[Row] = []
    bar = _progress(len(subjects) * len(inputs), progress)
    for subject in subjects:
        if not _prepare(subject, ctx, meta, log, bar):
            bar.update(len(inputs))
            continue
        for name, inp in inputs.items():
            bar.set_description(f"{subject.label} {name}")
            times, cpu, out = _time(subject, inp, config)
            rows.append(_row(subject, inp, times, cpu, out, reference_embeddings[name], config))
            bar.update(1)
        subject.close()
        del subject
        gc.collect()
    bar.close()
    return rows


def _run_interleaved(subjects, inputs, reference_embeddings, config, ctx, meta, log, progress) -> list[Row]:
    """Every subject stays loaded; per shape, each is warmed up, then timed in rounds, the order
    rotating every round. A subject's turn is one untimed call (its caches and worker threads warm
    again after the others' turns) and one timed call, so each timed call meets the same warm state
    as in a one-by-one run, while a machine that speeds up or slows down during the run moves every
    row of the shape alike and the ratios stay fair. A subject leaves the rounds once it has spent
    ``max_seconds`` on timed calls (after at least 3)."""
    bar = _progress(len(subjects) + len(inputs) * max(config.repeats, 1), progress)
    live = []
    for subject in subjects:
        if _prepare(subject, ctx, meta, log, bar):
            live.append(subject)
        bar.update(1)
    rows: list[Row] = []
    for name, inp in inputs.items() if live else ():
        bar.set_description(f"{name}: interleaved rounds")
        calls = {id(s): _call(s, inp, config) for s in live}
        for s in live:
            for _ in range(config.warmup):
                calls[id(s)]()
        times = {id(s): [] for s in live}
        cpu = {id(s): [] for s in live}
        outs = {}
        for round_ in range(max(config.repeats, 1)):
            turn = round_ % len(live)
            for s in live[turn:] + live[:turn]:
                if sum(times[id(s)]) > config.max_seconds and len(times[id(s)]) >= 3:
                    continue
                timed, outs[id(s)] = time_calls(calls[id(s)], 1, 1, cpu_times=cpu[id(s)])  # a turn
                times[id(s)] += timed
            bar.update(1)
        rows += [_row(s, inp, times[id(s)], cpu[id(s)], outs[id(s)], reference_embeddings[name], config) for s in live]
    for s in live:
        s.close()
    bar.close()
    return rows


def _call(subject: peers_mod.Subject, inp: BenchInputs, config: BenchConfig) -> Callable[[], Any]:
    if config.device.startswith("cuda"):  # the wall time of the call until the GPU is done with it
        return lambda: (subject.run(inp), torch.cuda.synchronize())[0]
    return lambda: subject.run(inp)


def _time(subject: peers_mod.Subject, inp: BenchInputs, config: BenchConfig):
    """(wall times in s, CPU times in s, last output) of one subject timed alone on ``inp``."""
    cpu: list[float] = []
    times, out = time_calls(_call(subject, inp, config), config.warmup, config.repeats, config.max_seconds, cpu)
    return times, cpu, out


def _row(subject: peers_mod.Subject, inp: BenchInputs, times: list[float], cpu: list[float], out,
         reference: torch.Tensor, config: BenchConfig) -> Row:
    median, p90, fastest = summarize(times)
    emb = subject.embed(inp, out)
    fid_mean = fid_min = None
    if emb is not None:
        cos = cosine_rows(emb.float(), reference)
        fid_mean, fid_min = float(cos.mean()), float(cos.min())
    return Row(model=config.model_name, shape=inp.spec.name, engine=subject.engine, precision=subject.precision,
               median_ms=median, p90_ms=p90, min_ms=fastest, cpu_ms=float(statistics.median(cpu)) * 1e3,
               repeats=len(times),
               tokens_per_s=inp.tokens / (median / 1e3), fidelity_mean=fid_mean, fidelity_min=fid_min,
               peer=not subject.ours, times_ms=[t * 1e3 for t in times])


def _ratios(rows: list[Row]) -> None:
    """vs_best_peer = median / the fastest peer's median on the same shape (< 1: faster than all peers);
    cpu_vs_best_peer: the same with CPU times, against the peer with the least CPU time."""
    for shape in {r.shape for r in rows}:
        peer_rows = [r for r in rows if r.shape == shape and r.peer]
        if not peer_rows:
            continue
        best = min(peer_rows, key=lambda r: r.median_ms)
        best_cpu = min(peer_rows, key=lambda r: r.cpu_ms)
        for r in rows:
            if r.shape == shape:
                r.vs_best_peer = r.median_ms / best.median_ms
                r.cpu_vs_best_peer = r.cpu_ms / best_cpu.cpu_ms if best_cpu.cpu_ms > 0 else None
                r.best_peer = f"{best.engine} {best.precision}"


class _NoBar:
    def set_description(self, *_):
        pass

    def update(self, *_):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()

    return tqdm(total=total, unit="row", leave=False, dynamic_ncols=True)
