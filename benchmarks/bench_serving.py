"""Load benchmark of ``bertrt serve`` against a plain transformers + FastAPI server, in the same run.

Closed-loop clients (httpx, asyncio) send short embedding requests (one text of 8-64 tokens each) at
each concurrency for ``--duration`` seconds after a warm-up; reports p50/p90/p99 latency and
throughput per server and the ratio to the baseline, and writes CSV, JSON and a PNG plot to
bench-results/. The servers run one at a time, on loopback ports, with the same model and threads.

    python benchmarks/bench_serving.py --concurrency 1 8 32 --duration 10
    python benchmarks/bench_serving.py --also bertrt-int8a7=out/minilm-int8-a7   # + a quantized checkpoint
    pytest benchmarks/bench_serving.py -m slow        # a short version
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the a model server request batch token latency queue engine fast small river mountain city music "
    "language people system network data result answer question simple running learning quickly open "
    "window morning evening garden science history market travel weather coffee library"
).split()


def make_texts(count: int, tokenizer, seed: int = 0, low: int = 8, high: int = 64) -> list[str]:
    """Distinct texts of ``low``..``high`` tokens ([CLS]/[SEP] included)."""
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < count:
        words = rng.randint(max(1, low - 4), high - 4)
        text = f"{len(texts)} " + " ".join(rng.choice(WORDS) for _ in range(words))
        n = len(tokenizer.encode_batch([text])[0].ids)
        if low <= n <= high:
            texts.append(text)
    return texts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    def __init__(self, name: str, command: list[str], port: int, health: str):
        self.name, self.command, self.port, self.health = name, command, port, health
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        import httpx

        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                error = self.process.stderr.read().decode()[-2000:] if self.process.poll() is not None else ""
                self.__exit__()
                raise RuntimeError(f"{self.name} server did not come up: {error}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class _HttpxClient:
    def __init__(self, url: str, concurrency: int):
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=url, timeout=60, limits=limits)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reply = await self.client.post(path, content=body, headers={"content-type": "application/json"})
        return reply.status_code, reply.content

    async def close(self) -> None:
        await self.client.aclose()


class _AiohttpClient:
    def __init__(self, url: str, concurrency: int):
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                             timeout=aiohttp.ClientTimeout(total=60))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with self.session.post(self.url + path, data=body,
                                     headers={"content-type": "application/json"}) as reply:
            return reply.status, await reply.read()

    async def close(self) -> None:
        await self.session.close()


CLIENTS = {"aiohttp": _AiohttpClient, "httpx": _HttpxClient}


async def drive(url: str, texts: list[str], concurrency: int, duration: float, warmup: float,
                client: str = "aiohttp") -> dict:
    """Closed loop: ``concurrency`` clients, each sending its next request as soon as one returns.

    The load generator shares the machine with the server under test, so its own CPU cost per request
    lowers every server's throughput; ``--client`` picks the HTTP client (aiohttp is the lighter one),
    and the JSON records which."""
    import orjson

    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    bodies = [orjson.dumps({"input": text, "model": "m"}) for text in texts]
    http = CLIENTS[client](url, concurrency)
    try:
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup
        stop_at = measure_from + duration

        async def worker():
            nonlocal errors
            while loop.time() < stop_at:
                body = bodies[next(counter) % len(bodies)]
                begin = time.perf_counter()
                status, content = await http.post("/v1/embeddings", body)
                elapsed = time.perf_counter() - begin
                if loop.time() < measure_from:
                    continue
                if status != 200 or len(orjson.loads(content)["data"]) != 1:
                    errors += 1
                else:
                    latencies.append(elapsed)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start - warmup
    finally:
        await http.close()
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def servers(model: str | None, device: str, threads: int | None, max_wait_ms: float,
            also: dict[str, str] | None = None, workers: int = 1) -> list[ServerProcess]:
    """bertrt on ``model``, one more bertrt server per ``also`` entry (name -> checkpoint dir, e.g. a
    ``bertrt quantize`` output), and the baseline on ``model``; all with the same threads."""
    ours_port, base_port = free_port(), free_port()

    def serve_command(directory: str | None, port: int) -> list[str]:
        command = [sys.executable, "-m", "bertrt", "serve", *([directory] if directory else []), "--port", str(port),
                   "--device", device, "--log-level", "warning", "--max-wait-ms", str(max_wait_ms),
                   "--workers", str(workers)]
        return command + (["--threads", str(threads)] if threads else [])

    ours = serve_command(model, ours_port)
    base = [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py"), "--port", str(base_port)]
    if model:
        base += ["--model", model]
    if threads:
        base += ["--threads", str(threads)]
    extra = []
    for name, directory in (also or {}).items():
        port = free_port()
        extra.append(ServerProcess(name, serve_command(directory, port), port, "/v2/health/ready"))
    return [
        ServerProcess("bertrt", ours, ours_port, "/v2/health/ready"),
        *extra,
        ServerProcess("baseline", base, base_port, "/health"),
    ]


def run(
    concurrency: list[int],
    duration: float,
    warmup: float,
    model: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    max_wait_ms: float = 2.0,
    out: Path | None = ROOT / "bench-results",
    client: str = "aiohttp",
    also: dict[str, str] | None = None,
    workers: int = 1,
) -> list[dict]:
    import bertrt

    engine_tokenizer = bertrt.load(model, device="cpu").tokenizer
    texts = make_texts(2000, engine_tokenizer)
    rows = []
    for server in servers(model, device, threads, max_wait_ms, also, workers):
        with server:
            for c in concurrency:
                result = asyncio.run(drive(server.url, texts, c, duration, warmup, client))
                rows.append({"server": server.name, **result})
                print(
                    f"  {server.name:14s} c={c:3d}  {result['throughput_rps']:8.1f} req/s  "
                    f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}",
                    flush=True,
                )
    report(rows, concurrency)
    if out is not None:
        write(
            rows,
            out,
            {
                "duration_s": duration,
                "warmup_s": warmup,
                "device": device,
                "threads": threads,
                "max_wait_ms": max_wait_ms,
                "client": client,
                "model": model or "all-MiniLM-L6-v2 (bundled)",
                "also": also or {},
                "workers": workers,
            },
        )
    return rows


def report(rows: list[dict], concurrency: list[int]) -> None:
    by = {(r["server"], r["concurrency"]): r for r in rows}
    names = list(dict.fromkeys(r["server"] for r in rows if r["server"] != "baseline"))
    print(
        f"\n{'server':>14} {'conc':>4} | {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} | {'baseline req/s':>14} "
        f"{'p50 ms':>8} {'p99 ms':>8} | {'speedup':>7} {'p99/p50':>7}"
    )
    for name in names:
        for c in concurrency:
            ours, base = by[(name, c)], by[("baseline", c)]
            print(
                f"{name:>14} {c:>4} | {ours['throughput_rps']:8.1f} {ours['p50_ms']:8.2f} {ours['p99_ms']:8.2f} | "
                f"{base['throughput_rps']:14.1f} {base['p50_ms']:8.2f} {base['p99_ms']:8.2f} | "
                f"{ours['throughput_rps'] / base['throughput_rps']:6.2f}x {ours['p99_ms'] / ours['p50_ms']:7.2f}"
            )


def hardware() -> dict:
    import bertrt
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "bertrt": bertrt.__version__,
        "python": platform.python_version(),
    }


def write(rows: list[dict], out: Path, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "serving.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {**hardware(), **settings}
    (out / "serving.json").write_text(json.dumps({"settings": meta, "results": rows}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = sorted({r["concurrency"] for r in rows})
    x = np.arange(len(levels))
    names = list(dict.fromkeys(r["server"] for r in rows))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        mine = {r["concurrency"]: r for r in rows if r["server"] == name}
        left.bar(x + (i - (len(names) - 1) / 2) * width, [mine[c]["throughput_rps"] for c in levels], width, label=name)
        right.plot(levels, [mine[c]["p50_ms"] for c in levels], "o-", label=f"{name} p50")
        right.plot(levels, [mine[c]["p99_ms"] for c in levels], "s--", label=f"{name} p99")
    left.set(
        xticks=x,
        xticklabels=[str(c) for c in levels],
        xlabel="concurrent clients",
        ylabel="throughput (requests/s)",
        title="Throughput",
    )
    right.set(
        xscale="log", xticks=levels, xlabel="concurrent clients", ylabel="latency (ms)", yscale="log", title="Latency"
    )
    right.set_xticklabels([str(c) for c in levels])
    left.legend()
    right.legend(fontsize=8)
    fig.suptitle(
        f"bertrt serve vs transformers+FastAPI (FP32): MiniLM, 1 text of 8-64 tokens per request\n"
        f"{meta['cpu']} ({meta['cores']} cores), torch {meta['torch']}, device {settings['device']}, "
        f"torch threads {settings['threads'] or 'default'}, {settings['duration_s']:g} s closed loop per point, "
        f"{settings['client']} load generator on the same machine",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "serving.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--model", default=None, help="checkpoint directory (default: bundled MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both servers")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp",
                        help="load generator's HTTP client (it runs on the same cores as the server)")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                        help="one more bertrt server on checkpoint DIR (e.g. a bertrt quantize output); repeatable")
    parser.add_argument("--workers", type=int, default=1, help="bertrt serve --workers (batches run at once)")
    args = parser.parse_args()
    also = {}
    for entry in args.also:
        name, sep, directory = entry.partition("=")
        if not sep or not name or not directory or name == "baseline":
            parser.error(f"--also takes NAME=DIR with a name other than 'baseline', got {entry!r}")
        if not Path(directory).is_dir():
            parser.error(f"--also {entry!r}: {directory} is not a directory")
        also[name] = directory
    run(args.concurrency, args.duration, args.warmup, args.model, args.device, args.threads, args.max_wait_ms, args.out,
        args.client, also, args.workers)


try:
    import pytest
except ImportError:  # running as a script without pytest
    pytest = None

if pytest is not None:

    @pytest.mark.slow
    def test_serving_load_short(tmp_path):
        """A short run (not in the normal suite: benchmarks/ is outside testpaths, and it is marked slow)."""
        pytest.importorskip("transformers")
        rows = run([1, 8], duration=2.0, warmup=1.0, out=tmp_path)
        assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows)
        assert (tmp_path / "serving.csv").exists() and (tmp_path / "serving.png").exists()


if __name__ == "__main__":
    main()
