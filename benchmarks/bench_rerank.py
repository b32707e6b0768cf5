"""Rerank throughput: 1 query x 100 documents of ~100 tokens, bertrt against sentence-transformers'
CrossEncoder.predict on the same random MiniLM-L6-shaped cross-encoder (hidden 384, 6 layers, 12
heads, intermediate 1536, one output: the shape of cross-encoder/ms-marco-MiniLM-L-6-v2), same CPU,
same threads, one run.

    python benchmarks/bench_rerank.py [--repeats 15] [--json bench-results/rerank.json]
    pytest benchmarks/bench_rerank.py --benchmark-columns=median,iqr,ops

bertrt runs FP32 and INT8 (dynamic, 8-bit and 7-bit activations); "bertrt-best" is the fastest
precision whose top-10 order equals bertrt FP32's. Medians of perf_counter after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import bertrt
import pytest
import torch
from bertrt.model.loader import default_model_dir

BERTRT_SUBJECTS = ("bertrt-fp32", "bertrt-int8", "bertrt-int8a7")
DOCUMENTS, DOCUMENT_WORDS = 100, 80  # ~100 WordPiece tokens each with the MiniLM vocabulary
WORDS = ("river stone cloud garden market winter summer engine history science music forest village "
         "teacher doctor window mountain ocean station library bridge country kitchen language animal "
         "computer network energy planet quickly slowly carefully between without because although").split()


def make_cross_encoder(directory: Path, seed: int = 0) -> Path:
    """A random MiniLM-L6-shaped BertForSequenceClassification (1 label) with MiniLM's tokenizer."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, max_position_embeddings=512, num_labels=1)
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)  # spread the random scores so the order is well defined
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_dir() / name, directory / name)
    return directory


def workload(seed: int = 0) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    query = " ".join(rng.choice(WORDS) for _ in range(8))
    documents = [" ".join(rng.choice(WORDS) for _ in range(DOCUMENT_WORDS)) for _ in range(DOCUMENTS)]
    return query, documents


def median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    fn()
    fn()  # warm-up: kernel plans, allocator, weight packing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def subjects(model_dir: Path) -> dict:
    """name -> (rank function () -> list of document indices best first)."""
    from sentence_transformers import CrossEncoder

    query, documents = workload()
    fp32 = bertrt.load(model_dir, device="cpu", dtype="float32")
    int8 = bertrt.load(model_dir, device="cpu", dtype="float32")
    bertrt.quantize_(int8, bertrt.Int8DynamicConfig())
    int8a7 = bertrt.load(model_dir, device="cpu", dtype="float32")
    bertrt.quantize_(int8a7, bertrt.Int8DynamicConfig(act_bits=7))
    cross = CrossEncoder(str(model_dir), device="cpu", max_length=512)
    pairs = [(query, d) for d in documents]

    def st_rank():
        scores = cross.predict(pairs, batch_size=32, show_progress_bar=False)
        return sorted(range(len(scores)), key=lambda i: -float(scores[i]))

    return {
        "bertrt-fp32": lambda: [r["index"] for r in fp32.rerank(query, documents)],
        "bertrt-int8": lambda: [r["index"] for r in int8.rerank(query, documents)],
        "bertrt-int8a7": lambda: [r["index"] for r in int8a7.rerank(query, documents)],
        "sentence-transformers": st_rank,
    }


def run(repeats: int, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_cross_encoder(Path(tmp) / "minilm-l6-cross-encoder")
        ranks = subjects(model_dir)
        reference = ranks["bertrt-fp32"]()[:10]
        results = {}
        for name, rank in ranks.items():
            median, times = median_seconds(rank, repeats)
            results[name] = {"median_s": median, "p10_s": sorted(times)[len(times) // 10],
                             "p90_s": sorted(times)[(9 * len(times)) // 10],
                             "top10_equals_fp32": rank()[:10] == reference}
    kept = [n for n in BERTRT_SUBJECTS if results[n]["top10_equals_fp32"]]
    best = min(kept, key=lambda n: results[n]["median_s"])
    peer = results["sentence-transformers"]["median_s"]
    return {"workload": f"1 query x {DOCUMENTS} documents of ~100 tokens", "model": "random MiniLM-L6-shaped "
            "cross-encoder (hidden 384, 6 layers, 12 heads, 1 label)", "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "bertrt": bertrt.__version__, "results": results, "bertrt_best": best,
            "speedup_vs_sentence_transformers": peer / results[best]["median_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    report = run(args.repeats, args.threads)
    for name, row in report["results"].items():
        print(f"{name:24s} median {row['median_s'] * 1000:8.1f} ms  p10 {row['p10_s'] * 1000:8.1f}  "
              f"p90 {row['p90_s'] * 1000:8.1f}  top-10 = fp32: {row['top10_equals_fp32']}")
    print(f"bertrt best ({report['bertrt_best']}) is {report['speedup_vs_sentence_transformers']:.2f}x "
          f"sentence-transformers CrossEncoder.predict ({report['threads']} threads)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))


# -- pytest-benchmark ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rank_functions(tmp_path_factory):
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("sentence_transformers")
    return subjects(make_cross_encoder(tmp_path_factory.mktemp("cross") / "model"))


@pytest.mark.parametrize("name", [*BERTRT_SUBJECTS, "sentence-transformers"])
def test_rerank(benchmark, rank_functions, name):
    ranked = benchmark(rank_functions[name])
    assert sorted(ranked) == list(range(DOCUMENTS))


if __name__ == "__main__":
    main()
