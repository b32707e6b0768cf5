"""End to end: bertrt against each available peer on all-MiniLM-L6-v2, batch 8 x 128 tokens.

    pytest benchmarks/bench_end_to_end.py --benchmark-columns=median,iqr,ops

Every engine gets the same seeded token batch (bertrt packed, peers padded) and the same threads
(all usable cores, or BERTRT_BENCH_THREADS). A peer that is not installed is skipped with the reason.
ONNX exports are cached in ~/.cache/bertrt/bench (or $BERTRT_CACHE/bench). ``extra_info`` carries the
pooled-embedding cosine to transformers FP32 (mean and min over the batch).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from bertrt.bench import peers  # noqa: E402
from bertrt.bench.cli import default_cache  # noqa: E402
from bertrt.bench.runner import cosine_rows  # noqa: E402
from bertrt.bench.shapes import ShapeSpec, make_inputs  # noqa: E402
from bertrt.model.config import EncoderConfig  # noqa: E402
from bertrt.model.loader import default_model_dir, read_pooling  # noqa: E402
from bertrt.runtime import probe  # noqa: E402

SHAPE = ShapeSpec(8, 128, 128)
SUBJECTS = {
    "bertrt-fp32": lambda: peers.Bertrt("fp32"),
    "bertrt-bf16": lambda: peers.Bertrt("bf16"),
    "bertrt-int8": lambda: peers.Bertrt("int8"),
    **{name: (lambda name=name: peers.make_peer(name)) for name in peers.PEER_NAMES},
}


@pytest.fixture(scope="module")
def context():
    threads = int(os.environ.get("BERTRT_BENCH_THREADS", 0)) or probe.cpu().cores
    torch.set_num_threads(threads)
    model_dir = default_model_dir()
    config = EncoderConfig.from_file(model_dir / "config.json")
    return peers.Context(
        model_dir=model_dir,
        threads=threads,
        cache_dir=default_cache(),
        pooling=read_pooling(model_dir)[0],
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        log=lambda message: None,
    )


@pytest.fixture(scope="module")
def inputs(context):
    return make_inputs(SHAPE, context.model_dir / "vocab.txt", seed=0)


@pytest.fixture(scope="module")
def reference(context, inputs):
    subject = peers.Transformers("fp32")
    if subject.available():
        subject = peers.Bertrt("fp32")
    subject.prepare(context)
    return subject.embed(inputs, subject.run(inputs)).float()


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_end_to_end_minilm_8x128(benchmark, name, context, inputs, reference):
    subject = SUBJECTS[name]()
    reason = subject.available()
    if reason:
        pytest.skip(f"{name}: {reason}")
    try:
        subject.prepare(context)
    except peers.BenchError as exc:
        pytest.skip(f"{name}: {exc}")
    benchmark.group = f"MiniLM {SHAPE.name}, {context.threads} threads, {probe.cpu().isa}"
    benchmark.extra_info.update(
        {"engine": subject.engine, "precision": subject.precision, "cpu": probe.cpu().model, "tokens": inputs.tokens}
    )
    out = benchmark.pedantic(subject.run, args=(inputs,), warmup_rounds=2, rounds=10, iterations=1)
    cos = cosine_rows(subject.embed(inputs, out), reference)
    benchmark.extra_info.update({"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())})
    assert float(cos.min()) > 0.95, f"{name}: embeddings far from the FP32 reference"
