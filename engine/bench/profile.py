"""Where bertrt's time goes: per-op wall time of one ``runner.run(packed_batch, "embed")``.

Every op dispatcher in ``bertrt.ops`` (attention, bias_gelu, bias_residual_layer_norm,
embedding_layer_norm, linear: the packed CPU GEMM), every linear module (forward hooks) and the pooling are timed with
``time.perf_counter`` (CPU ops are synchronous); "python/other" is the rest of the call: the encoder's
Python, views and reshapes, position ids, dispatch. The instrumentation itself costs a few
microseconds per op, so the un-instrumented median is reported beside it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import torch

from .. import ops
from ..model import bert as bert_module

CATEGORIES = {
    "linear": "GEMMs (qkv, attn_out, ffn_in, ffn_out)",
    "attention": "attention (ops.attention)",
    "bias_residual_layer_norm": "bias + residual + LayerNorm",
    "bias_gelu": "bias + GELU",
    "embedding_layer_norm": "embeddings + LayerNorm",
    "pool": "pooling",
    "other": "python/other",
}


class OpTimer:
    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += self.clock() - start
                self.calls[name] += 1
        return timed

    def _timed_activation(self, module, starts: dict[int, float]):
        plain, timed = module.forward_activation, self.wrap("linear", module.forward_activation)

        def call(*args, **kwargs):  # from inside module.forward the hooks already time it
            return (plain if id(module) in starts else timed)(*args, **kwargs)
        return call

    @contextlib.contextmanager
    def instrument(self, model: torch.nn.Module):
        saved = {name: getattr(ops, name) for name in ("attention", "bias_gelu", "bias_residual_layer_norm",
                                                       "embedding_layer_norm", "linear")}
        saved_pool = bert_module.pool
        handles = []
        starts: dict[int, float] = {}

        def pre(module, _args):
            starts[id(module)] = self.clock()

        def post(module, _args, _out):
            self.seconds["linear"] += self.clock() - starts.pop(id(module))
            self.calls["linear"] += 1

        fused = []  # quantized linears' GEMM+GELU entry bypasses __call__, so hooks miss it
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__:
                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
            if callable(getattr(module, "forward_activation", None)):
                module.forward_activation = self._timed_activation(module, starts)
                fused.append(module)
        try:
            for name, fn in saved.items():
                setattr(ops, name, self.wrap(name, fn))
            bert_module.pool = self.wrap("pool", saved_pool)
            yield self
        finally:
            for name, fn in saved.items():
                setattr(ops, name, fn)
            bert_module.pool = saved_pool
            for handle in handles:
                handle.remove()
            for module in fused:
                del module.forward_activation


def profile_run(engine, batch, repeats: int = 10, warmup: int = 2, clock=time.perf_counter) -> dict:
    """{"median_ms": un-instrumented median, "instrumented_ms": ..., "ops": {category: {ms, share, calls}}}

    clock: time.perf_counter (wall), or time.process_time (CPU time: steadier on a busy machine, and
    the same thing as wall time when torch runs one thread)."""
    run = lambda: engine.runner.run(batch, "embed")
    for _ in range(warmup):
        run()
    plain = []
    for _ in range(repeats):
        start = clock()
        run()
        plain.append(clock() - start)
    timer = OpTimer(clock)
    totals = []
    with timer.instrument(engine.checkpoint.model):
        run()
        timer.seconds.clear()
        timer.calls.clear()
        for _ in range(repeats):
            start = clock()
            run()
            totals.append(clock() - start)
    total = sum(totals)
    categories = {name: timer.seconds.get(name, 0.0) for name in CATEGORIES if name != "other"}
    categories["other"] = max(total - sum(categories.values()), 0.0)
    return {
        "median_ms": statistics.median(plain) * 1e3,
        "instrumented_ms": statistics.median(totals) * 1e3,
        "ops": {name: {"ms_per_run": seconds / repeats * 1e3, "share": seconds / total if total else 0.0,
                       "calls_per_run": timer.calls.get(name, 0) / repeats}
                for name, seconds in categories.items()},
    }


def format_profile(label: str, result: dict) -> str:
    lines = [f"{label}: median {result['median_ms']:.2f} ms (instrumented {result['instrumented_ms']:.2f} ms)"]
    for name, entry in sorted(result["ops"].items(), key=lambda kv: -kv[1]["share"]):
        calls = f"{entry['calls_per_run']:.0f} calls" if name != "other" else ""
        lines.append(f"  {CATEGORIES[name]:<40} {entry['ms_per_run']:8.2f} ms  {entry['share'] * 100:5.1f}%  {calls}")
    return "\n".join(lines)
