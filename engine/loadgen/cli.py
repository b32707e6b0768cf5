"""``bertrt loadgen``: MLPerf LoadGen scenarios over bertrt in-process, ONNX Runtime (``--compare``)
or a running ``bertrt serve`` (``--url``). Everything is checked before LoadGen starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..api import load
from ..errors import InputError
from .dataset import TASKS, load_dataset
from .peak import find_peak
from .report import plot_png, summary_lines, write_json
from .runner import SCENARIOS, RunConfig, run_loadgen
from .sut import EngineTarget, HttpTarget


def register(sub) -> None:
    p = sub.add_parser("loadgen", help="MLPerf LoadGen scenarios (SingleStream, MultiStream, Server, Offline)",
                       description=__doc__)
    p.add_argument("--model", "-m", default=None, help="checkpoint directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--task", default="embed", help="|".join(TASKS))
    p.add_argument("--scenario", default="Offline",
                   help=f"one or more of {', '.join(SCENARIOS)}, comma-separated (run in that order)")
    p.add_argument("--dataset", required=True, help="JSON lines with 'text' (embed/classify), SQuAD JSON (qa)")
    p.add_argument("--out", required=True, help="folder for LoadGen's logs, loadgen.json and loadgen.png")
    p.add_argument("--mode", default="performance", help="performance | accuracy")
    p.add_argument("--target-qps", type=float, default=None, help="Server: target QPS (default 40%% of warm-up "
                                                                   "throughput; with --find-peak: the first try)")
    p.add_argument("--latency-bound-ms", type=float, default=130.0, help="Server latency bound (MLPerf BERT: 130)")
    p.add_argument("--latency-percentile", type=float, default=0.99, help="Server/MultiStream percentile")
    p.add_argument("--min-duration-ms", type=int, default=10_000, help="LoadGen min_duration (MLPerf: 600000)")
    p.add_argument("--min-query-count", type=int, default=64, help="LoadGen min_query_count")
    p.add_argument("--samples-per-query", type=int, default=8, help="MultiStream samples per query")
    p.add_argument("--expected-qps", type=float, default=None, help="Offline expected QPS (default 1.5x warm-up)")
    p.add_argument("--batch-size", type=int, default=32, help="most samples the SUT runs in one batch")
    p.add_argument("--workers", type=int, default=None, help="SUT threads (default 1 in-process, 8 with --url)")
    p.add_argument("--find-peak", action="store_true", help="search the highest VALID Server QPS")
    p.add_argument("--max-tries", type=int, default=6, help="--find-peak: most Server runs")
    p.add_argument("--url", default=None, help="a running `bertrt serve` (network SUT) instead of in-process")
    p.add_argument("--backend", default="auto", help="in-process SUT backend: auto | torch | onnxruntime | ...")
    p.add_argument("--compare", default=None, help="a second in-process SUT on this backend (e.g. onnxruntime), "
                                                   "each scenario run on both in the same run")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.set_defaults(func=cmd_loadgen)


def _config(args) -> tuple[list[RunConfig], object]:
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if args.find_peak and not scenarios:
        scenarios = ["Server"]
    base = RunConfig(mode=args.mode, min_duration_ms=args.min_duration_ms, min_query_count=args.min_query_count,
                     target_qps=args.target_qps, latency_bound_ms=args.latency_bound_ms,
                     latency_percentile=args.latency_percentile, samples_per_query=args.samples_per_query,
                     batch_size=args.batch_size, workers=args.workers or (8 if args.url else 1),
                     expected_qps=args.expected_qps)
    if not scenarios:
        raise InputError("--scenario is empty")
    configs = [dataclasses.replace(base, scenario=s).validated() for s in scenarios]
    if args.find_peak and not any(c.scenario == "Server" for c in configs):
        raise InputError("--find-peak searches the Server scenario; add Server to --scenario")
    if args.url and args.compare:
        raise InputError("--compare runs a second in-process SUT; it cannot be combined with --url")
    return configs, base


def _targets(args, dataset) -> list:
    if args.url:
        return [HttpTarget(args.url, dataset)]
    task = "embed" if args.task == "embed" else args.task
    backends = [args.backend] + ([args.compare] if args.compare else [])
    return [EngineTarget(load(args.model, task=task, device=args.device, backend=b, dtype=args.dtype), dataset)
            for b in backends]


def _reference(args, dataset):
    """FP32 vectors (n, hidden) of the dataset's texts from bertrt's torch backend: embed accuracy's yardstick."""
    return load(args.model, task="embed", device=args.device, backend="torch", dtype="float32").embed(
        dataset.texts)


def cmd_loadgen(args) -> int:
    configs, _ = _config(args)  # bad scenario, QPS, durations: raise before anything loads
    dataset = load_dataset(args.dataset, args.task)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    targets = _targets(args, dataset)
    reference = _reference(args, dataset) if args.mode == "accuracy" and args.task == "embed" else None
    id2label = getattr(getattr(targets[0], "engine", None), "config", None)
    id2label = id2label.id2label if id2label is not None else None
    single = len(targets) == 1 and len(configs) == 1
    records, peak_tries = [], []
    for config in configs:
        for target in targets:
            where = out if single else out / target.name / config.scenario
            if args.find_peak and config.scenario == "Server":
                record, tries = find_peak(target, dataset, config, where, max_tries=args.max_tries)
                peak_tries += [{**t, "sut": target.name} for t in tries]
            else:
                record = run_loadgen(target, dataset, config, where, reference=reference, id2label=id2label)
            records.append(record)
            print(summary_lines([record])[0], flush=True)
    write_json(records, out / "loadgen.json", {"command": {k: v for k, v in vars(args).items() if k != "func"}})
    plot_png(records, out / "loadgen.png", peak_tries or None)
    print(json.dumps({"out": str(out), "results": [r["result"] for r in records]}))
    return 0
