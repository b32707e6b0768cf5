"""Quantization benchmark: fidelity on MiniLM and latency of FP32 / BF16 / INT8 dynamic / INT8 static
(bertrt's engine) against ONNX Runtime dynamic INT8.

    python benchmarks/bench_quantize.py [--out bench-results/quantize] [--skip-latency] [--skip-fidelity]
        [--models minilm,bert-base] [--batch 8] [--seq-len 128] [--repeats 10]

Fidelity: all-MiniLM-L6-v2, calibrated on paragraphs of Python's bundled ``pydoc_data.topics`` and
evaluated on a disjoint set of paragraphs: embedding cosine to FP32 (mean/min) per config.
Latency: median of ``--repeats`` forwards of one batch x seq_len batch, every token real; bert-base
is the bert-base-uncased shape with random weights (speed does not depend on the values).
Writes quantize.json and quantize.csv under --out. Speed figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def paragraphs() -> list[str]:
    import pydoc_data.topics as topics

    seen, out = set(), []
    for key in sorted(topics.topics):
        for para in topics.topics[key].split("\n\n"):
            text = " ".join(para.split())
            if len(text) >= 40 and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def configs():
    from bertrt.quant import Bf16Config, Int8DynamicConfig, Int8StaticConfig

    return {
        "bf16": Bf16Config(),
        "int8-dynamic": Int8DynamicConfig(),
        "int8-dynamic-a7": Int8DynamicConfig(act_bits=7),
        "int8-static-minmax": Int8StaticConfig(),
        "int8-static-minmax-a7": Int8StaticConfig(act_bits=7),
        "int8-static-percentile": Int8StaticConfig(method="percentile", percentile=99.999),
        "int8-static-entropy": Int8StaticConfig(method="entropy"),
        "int8-static-smoothquant0.5": Int8StaticConfig(smoothquant_alpha=0.5),
    }


def fidelity(n_calib: int, n_eval: int) -> list[dict]:
    from bertrt.model import load_checkpoint
    from bertrt.model.loader import default_model_dir
    from bertrt.quant import quantize_
    from bertrt.quant import report as rep

    texts = paragraphs()
    calib, held_out = texts[:n_calib], texts[-n_eval:]  # disjoint: first and last paragraphs
    assert not set(calib) & set(held_out)
    ckpt = load_checkpoint(default_model_dir())
    rows = []
    for name, config in configs().items():
        model = copy.deepcopy(ckpt.model)
        start = time.perf_counter()
        quantize_(model, config, calibration=calib, tokenizer=ckpt.tokenizer)
        seconds = time.perf_counter() - start
        fid = rep.fidelity(ckpt.model, model, held_out, ckpt.tokenizer, "embed")
        layers = rep.layer_sqnr(ckpt.model, model, rep.text_batches(held_out[:32], ckpt.tokenizer), "embed")
        row = {"model": "all-MiniLM-L6-v2", "config": name, "calib_texts": len(calib), "eval_texts": len(held_out),
               "cosine_mean": fid["cosine_mean"], "cosine_min": fid["cosine_min"],
               "layer_sqnr_db_min": min(layers.values()), "layer_sqnr_db_median": statistics.median(layers.values()),
               "quantize_s": seconds}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bert_base_checkpoint():
    from bertrt.model import BertModel, EncoderConfig

    config = EncoderConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=512)
    torch.manual_seed(0)
    model = BertModel(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


class _Ckpt:  # what onnx_qdq needs from a Checkpoint
    def __init__(self, model, tokenizer=None):
        self.model, self.config, self.tokenizer = model, model.config, tokenizer


def ort_dynamic_latency(model, batch, seq_len, repeats) -> float | None:
    try:
        import onnxruntime as ort
        from bertrt.quant.onnx_qdq import export_dynamic_int8
    except ImportError as exc:
        print(f"skipping ONNX Runtime: {exc}", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = export_dynamic_int8(_Ckpt(model), Path(tmp) / "dyn.onnx", task="embed")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq_len), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def latency(models: list[str], batch: int, seq_len: int, repeats: int, bf16_models: list[str]) -> list[dict]:
    from bertrt.model import load_checkpoint
    from bertrt.model.loader import default_model_dir
    from bertrt.quant import Bf16Config, Int8DynamicConfig, Int8StaticConfig, quantize_
    from bertrt.quant import report as rep

    rows = []
    calib = paragraphs()[:64]
    for name in models:
        if name == "minilm":
            ckpt = load_checkpoint(default_model_dir())
            fp32, tokenizer, label = ckpt.model, ckpt.tokenizer, "all-MiniLM-L6-v2"
        else:
            fp32, tokenizer, label = bert_base_checkpoint(), load_checkpoint(default_model_dir()).tokenizer, "bert-base"
        packed = rep.fixed_batch(fp32.config.vocab_size, batch, seq_len)
        results = {"fp32": rep.latency_ms(fp32, packed, "embed", repeats)}
        variants = {"bf16": Bf16Config(), "int8-dynamic": Int8DynamicConfig(),
                    "int8-dynamic-a7": Int8DynamicConfig(act_bits=7), "int8-static": Int8StaticConfig(),
                    "int8-dynamic-op": Int8DynamicConfig(kernel="op")}
        if name not in bf16_models:  # emulated BF16 on CPUs without AVX512-BF16/AMX is very slow
            variants.pop("bf16")
        print(json.dumps({"model": label, "fp32_ms": results["fp32"]}), flush=True)
        for key, config in variants.items():
            model = copy.deepcopy(fp32)
            quantize_(model, config, calibration=calib, tokenizer=tokenizer)
            results[key] = rep.latency_ms(model, packed, "embed", max(3, repeats // 3) if key == "bf16" else repeats)
            del model
            print(json.dumps({"model": label, f"{key}_ms": results[key]}), flush=True)
        results["ort-dynamic-int8"] = ort_dynamic_latency(fp32, batch, seq_len, repeats)
        for key, ms in results.items():
            row = {"model": label, "variant": key, "batch": batch, "seq_len": seq_len,
                   "threads": torch.get_num_threads(), "median_ms": ms,
                   "vs_fp32": ms / results["fp32"] if ms else None,
                   "vs_bf16": ms / results["bf16"] if ms and "bf16" in results else None,
                   "vs_ort_dynamic_int8": (ms / results["ort-dynamic-int8"]
                                           if ms and results["ort-dynamic-int8"] else None)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench-results/quantize")
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calib-texts", type=int, default=256)
    parser.add_argument("--eval-texts", type=int, default=256)
    parser.add_argument("--bf16-models", default="minilm,bert-base", help="models whose BF16 latency is measured")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-fidelity", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from bertrt.runtime.probe import read_cpu

    cpu = read_cpu()
    result = {"cpu": cpu.model, "isa": cpu.isa, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if not args.skip_fidelity:
        result["fidelity"] = fidelity(args.calib_texts, args.eval_texts)
    if not args.skip_latency:
        result["latency"] = latency(args.models.split(","), args.batch, args.seq_len, args.repeats,
                                    args.bf16_models.split(","))
    (out / "quantize.json").write_text(json.dumps(result, indent=1))
    rows = result.get("latency", []) + result.get("fidelity", [])
    if rows:
        keys = sorted({k for r in rows for k in r})
        with open(out / "quantize.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, keys)
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {out / 'quantize.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
