"""Fidelity and speed of a quantized model against its fp32 original, as JSON and markdown.

* per-layer SQNR (dB) of every replaced linear: the quantized module and the fp32 one run on the
  same (fp32 model's) input, so each figure isolates that layer's own error;
  SQNR = 10 log10(sum y^2 / sum (y - y_q)^2)
* end to end: output SQNR; embed -> cosine of sentence embeddings (mean/min); classify -> argmax
  agreement (and accuracy with labels); ner/qa -> token argmax agreement
* size on disk and median latency of the fp32, bf16 and quantized models on one fixed batch
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import PackedBatch, pack
from .api import quantize_
from .calibration import text_batches
from .configs import Bf16Config


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    ref = reference.double()
    noise = (ref - test.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def _first_param_dtype(module: nn.Module) -> torch.dtype | None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


@torch.inference_mode()
def layer_sqnr(fp_model: nn.Module, q_model: nn.Module, batches: list[PackedBatch], task: str) -> dict[str, float]:
    """name -> SQNR (dB) of each linear that quantization replaced or cast, on fp32 inputs."""
    q_modules = dict(q_model.named_modules())
    sums: dict[str, list[float]] = {}
    handles = []
    for name, module in fp_model.named_modules():
        if type(module) is not nn.Linear or name not in q_modules:
            continue
        q = q_modules[name]
        if type(q) is nn.Linear and _first_param_dtype(q) == _first_param_dtype(module):
            continue  # kept as it was

        def hook(_m, args, output, q=q, name=name):
            x = args[0]
            dtype = _first_param_dtype(q) if type(q) is nn.Linear else x.dtype
            y_q = q(x.to(dtype)).double()
            ref = output.double()
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += ref.pow(2).sum().item()
            acc[1] += (ref - y_q).pow(2).sum().item()

        handles.append(module.register_forward_hook(hook))
    try:
        for b in batches:
            fp_model.forward_packed(b.input_ids, b.cu_seqlens, b.max_seqlen, b.token_type_ids, task=task)
    finally:
        for h in handles:
            h.remove()
    return {name: (math.inf if n == 0 else 10.0 * math.log10(max(s, 1e-300) / n)) for name, (s, n) in sums.items()}


@torch.inference_mode()
def run_outputs(model: nn.Module, batches: list[PackedBatch], task: str, count: int) -> list[torch.Tensor]:
    """One fp32 output per input text (in input order)."""
    results: list[torch.Tensor | None] = [None] * count
    for b in batches:
        out = model.forward_packed(b.input_ids, b.cu_seqlens, b.max_seqlen, b.token_type_ids, task=task).float()
        if task in ("embed", "classify"):
            for row, index in enumerate(b.indices):
                results[index] = out[row]
        else:
            cu = b.cu_seqlens.tolist()
            for row, index in enumerate(b.indices):
                results[index] = out[cu[row]:cu[row + 1]]
    return results  # type: ignore[return-value]


def fidelity(fp_model, q_model, texts: list[str], tokenizer, task: str, labels: list | None = None,
             id2label: dict | None = None) -> dict:
    """End-to-end comparison on held-out texts."""
    batches = text_batches(texts, tokenizer)
    ref = run_outputs(fp_model, batches, task, len(texts))
    out = run_outputs(q_model, batches, task, len(texts))
    flat = lambda rows: torch.cat([r.flatten() for r in rows])
    result: dict = {"texts": len(texts), "task": task, "output_sqnr_db": sqnr_db(flat(ref), flat(out))}
    if task == "embed":
        cos = F.cosine_similarity(torch.stack(ref), torch.stack(out), dim=-1)
        result.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()), cosine_median=float(cos.median()))
    elif task == "classify":
        a = torch.stack(ref).argmax(-1)
        b = torch.stack(out).argmax(-1)
        result["agreement"] = float((a == b).float().mean())
        if labels is not None:
            names = {v: k for k, v in (id2label or {}).items()}
            gold = torch.tensor([names[label] if isinstance(label, str) else int(label) for label in labels])
            result["accuracy_fp32"] = float((a == gold).float().mean())
            result["accuracy_quantized"] = float((b == gold).float().mean())
    else:
        a = torch.cat([r.argmax(-1) for r in ref])
        b = torch.cat([o.argmax(-1) for o in out])
        result["token_agreement"] = float((a == b).float().mean())
    return result


def fixed_batch(vocab_size: int, batch: int = 8, seq_len: int = 128, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab_size > 2000 else 1, vocab_size, (batch, seq_len), generator=g).tolist()
    return pack(ids, [[0] * seq_len for _ in range(batch)], list(range(batch)))


@torch.inference_mode()
def latency_ms(model: nn.Module, batch: PackedBatch, task: str = "embed", repeats: int = 10, warmup: int = 2,
               budget_s: float = 60.0) -> float:
    """Median wall time (ms) of one forward over ``batch``; stops early after ``budget_s`` seconds."""
    run = lambda: model.forward_packed(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, batch.token_type_ids,
                                       task=task)
    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def latencies(fp_model, q_model, batch: PackedBatch, task: str, repeats: int = 10) -> dict:
    bf16 = copy.deepcopy(fp_model)
    quantize_(bf16, Bf16Config())
    result = {"batch": len(batch.indices), "seq_len": batch.max_seqlen, "threads": torch.get_num_threads(),
              "fp32_ms": latency_ms(fp_model, batch, task, repeats),
              "bf16_ms": latency_ms(bf16, batch, task, max(3, repeats // 3)),
              "quantized_ms": latency_ms(q_model, batch, task, repeats)}
    result["quantized_vs_fp32"] = result["quantized_ms"] / result["fp32_ms"]
    result["quantized_vs_bf16"] = result["quantized_ms"] / result["bf16_ms"]
    return result


def dir_size(path: Path, names=("model.safetensors", "pytorch_model.bin")) -> int:
    return sum((Path(path) / n).stat().st_size for n in names if (Path(path) / n).is_file())


def build(fp_model, q_model, tokenizer, eval_texts: list[str], labels: list | None = None, source_dir=None,
          out_dir=None, latency: bool = True, latency_batch: tuple[int, int] = (8, 128), repeats: int = 10) -> dict:
    task = fp_model.config.task
    eval_batches = text_batches(eval_texts, tokenizer)
    layers = layer_sqnr(fp_model, q_model, eval_batches, task)
    finite = [v for v in layers.values() if math.isfinite(v)]
    report = {
        "config": q_model.quantization["config"],
        "kept": q_model.quantization.get("kept", []),
        "layer_sqnr_db": layers,
        "layer_sqnr_db_min": min(finite) if finite else None,
        "layer_sqnr_db_median": statistics.median(finite) if finite else None,
        "fidelity": fidelity(fp_model, q_model, eval_texts, tokenizer, task, labels, fp_model.config.id2label),
    }
    if source_dir is not None and out_dir is not None:
        before, after = dir_size(Path(source_dir)), dir_size(Path(out_dir))
        report["size_bytes"] = {"fp32": before, "quantized": after, "ratio": after / before if before else None}
    if latency:
        seq_len = min(latency_batch[1], fp_model.config.max_position_embeddings)
        batch = fixed_batch(fp_model.config.vocab_size, latency_batch[0], seq_len)
        report["latency"] = latencies(fp_model, q_model, batch, task, repeats)
    return report


def to_markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [f"# Quantization report: {cfg['type']}", "", "Config: `" + json.dumps(cfg) + "`", ""]
    fid = report["fidelity"]
    lines += ["## End to end (held-out texts)", "", "| metric | value |", "| --- | --- |"]
    for key, value in fid.items():
        lines.append(f"| {key} | {value:.5f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if "size_bytes" in report:
        s = report["size_bytes"]
        lines += ["", "## Size on disk", "", f"fp32 {s['fp32'] / 1e6:.1f} MB -> quantized {s['quantized'] / 1e6:.1f} MB"
                  f" ({s['ratio']:.2f}x)" if s["ratio"] else ""]
    if "latency" in report:
        lat = report["latency"]
        lines += ["", f"## Latency (batch {lat['batch']} x {lat['seq_len']} tokens, {lat['threads']} threads, median)",
                  "", "| model | ms |", "| --- | --- |", f"| fp32 | {lat['fp32_ms']:.1f} |",
                  f"| bf16 | {lat['bf16_ms']:.1f} |", f"| quantized | {lat['quantized_ms']:.1f} |", "",
                  f"quantized / fp32 = {lat['quantized_vs_fp32']:.2f}, "
                  f"quantized / bf16 = {lat['quantized_vs_bf16']:.2f}"]
    lines += ["", "## Per-layer SQNR (dB, each layer on the fp32 model's input)", "", "| layer | SQNR dB |",
              "| --- | --- |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in report["layer_sqnr_db"].items()]
    return "\n".join(lines) + "\n"


def write(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "quantization_report.json", out / "quantization_report.md"
    js.write_text(json.dumps(report, indent=1, default=lambda v: None))
    md.write_text(to_markdown(report))
    return js, md
