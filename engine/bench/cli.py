"""``bertrt bench``: bertrt against transformers, ONNX Runtime and OpenVINO on this CPU."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bertrt
import torch

from ..errors import InputError
from ..ops.plan import validate_kernels
from ..runtime import probe
from ..runtime.cache import cache_dir
from .models import CONFIGS, resolve_model
from .names import (
    CPU_PEER_NAMES,
    DEFAULT_SHAPES,
    GPU_PEER_NAMES,
    GPU_PRECISIONS,
    INT8_PRECISIONS,
    PEER_NAMES,
    PRECISIONS,
)
from .peers import quantize_int8
from .profile import format_profile, profile_run
from .report import print_table, write_files
from .runner import BenchConfig, run_bench
from .shapes import make_inputs, parse_shapes


def default_precisions() -> str:
    """fp32, bf16 and int8 with 8- and 7-bit activations, and 7-bit with per-token zero points and
    SmoothQuant (bertrt.quant); the table's cosine columns say which keep the fidelity a user needs."""
    return "fp32,bf16,int8,int8a7,int8a7sq"


def default_cache() -> Path:
    """bertrt's cache (``$BERTRT_CACHE_DIR``, else ~/.cache/bertrt): the peers read the same ONNX
    exports as the onnxruntime/openvino backends; random checkpoints go to its bench/ folder."""
    return cache_dir()


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise InputError(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark bertrt against transformers / ONNX Runtime / OpenVINO on CPU",
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", "-m", default=None, help="checkpoint directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--config", default=None, choices=tuple(CONFIGS),
                   help="a random-weight BERT of this shape instead of --model (written once to the cache)")
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                   help="BATCHxLEN or BATCHxMIN-MAX (seeded random lengths), comma separated")
    p.add_argument("--precisions", default="auto",
                   help="bertrt precisions, comma separated from fp32,bf16,int8,int8a7 (int8 with 7-bit activations), "
                        "int8a7sq (7-bit, per-token zero points, SmoothQuant calibrated on seeded texts), "
                        "or none; auto: fp32,bf16,int8,int8a7,int8a7sq")
    p.add_argument("--peers", default=",".join(CPU_PEER_NAMES), help="peers to run (none for bertrt only)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop a row's repeats after this long (>= 3 runs)")
    p.add_argument("--threads", type=int, default=0, help="threads for every engine (0: all usable cores)")
    p.add_argument("--kernels", default="auto",
                   help="bertrt op kernels (auto|torch|cpu|ref); a comma list adds a set of rows per further "
                        "setting, named bertrt[kernels=...] (e.g. auto,torch: is the plan ever slower than torch?)")
    p.add_argument("--interleave", action="store_true",
                   help="keep every engine loaded and time them in rounds (a turn each: one untimed call, one "
                        "timed), so that a machine whose speed drifts during the run (shared VMs) moves every row "
                        "alike")
    p.add_argument("--e2e", action="store_true", help="also time engine.embed(texts): tokenize + batch + run")
    p.add_argument("--seed", type=int, default=0, help="seed for token ids, lengths and random weights")
    p.add_argument("--out", default="bench-results", help="directory for CSV / JSON / PNG")
    p.add_argument("--cache-dir", default=None,
                   help="ONNX exports (<dir>/onnx) and random checkpoints (<dir>/bench); default: bertrt's cache, "
                        "$BERTRT_CACHE_DIR or ~/.cache/bertrt")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--profile", action="store_true",
                   help="instead of comparing: per-op time breakdown of bertrt (GEMMs, attention, norms, python)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N]; with cuda the default precisions are "
                   f"{','.join(GPU_PRECISIONS)} and the default peers {','.join(GPU_PEER_NAMES)}")
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the plan, run nothing")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        raise InputError("--repeats must be >= 1, --warmup and --threads >= 0")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache()
    gpu = args.device.startswith("cuda")
    if not (args.device == "cpu" or args.device == "cuda" or (gpu and args.device[4:5] == ":"
                                                               and args.device[5:].isdigit())):
        raise InputError(f"--device must be cpu or cuda[:N], got {args.device!r}")
    precisions = args.precisions
    if precisions == "auto":
        precisions = ",".join(GPU_PRECISIONS) if gpu else default_precisions()
    peers = ",".join(GPU_PEER_NAMES) if gpu and args.peers == ",".join(CPU_PEER_NAMES) else args.peers
    shapes, precisions, peers = (parse_shapes(args.shapes), _list(precisions, PRECISIONS, "precisions"),
                                 _list(peers, PEER_NAMES, "peers"))
    if gpu and (bad := [p for p in peers if p.startswith(("ort", "openvino"))]):
        raise InputError(f"peers {bad} run on the CPU only; with --device cuda use {', '.join(GPU_PEER_NAMES)}")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not kernels or len(set(kernels)) != len(kernels):
        raise InputError(f"--kernels must name each setting once, got {args.kernels!r}")
    for k in kernels:
        validate_kernels(k)
    if args.dry_run:
        print(f"bench plan: model {args.model or args.config or 'bundled MiniLM'} on {args.device}; shapes "
              f"{[s.name for s in shapes]}; bertrt {precisions}; peers {peers}; {args.repeats} repeats")
        return 0
    model_dir, name = resolve_model(args.model, args.config, cache / "bench", args.seed)
    config = BenchConfig(
        model_dir=model_dir, model_name=name, shapes=shapes, precisions=precisions, peers=peers, device=args.device,
        repeats=args.repeats, warmup=args.warmup, threads=args.threads, max_seconds=args.max_seconds,
        cache_dir=cache, seed=args.seed, e2e=args.e2e, kernels=kernels[0], more_kernels=tuple(kernels[1:]),
        interleave=args.interleave)
    log = lambda message: print(message, file=sys.stderr)
    if args.profile:
        return _profile(config, Path(args.out))
    result = run_bench(config, log=log, progress=not args.no_progress)
    print_table(result)
    paths = write_files(result, Path(args.out), plot=not args.no_plot)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def _profile(config, out_dir: Path) -> int:
    threads = config.threads or probe.cpu().cores
    torch.set_num_threads(threads)
    cpu = probe.cpu()
    # One thread: CPU time (process_time) measures the work and not the other processes sharing the CPU.
    clock, clock_name = (time.process_time, "CPU time") if threads == 1 else (time.perf_counter, "wall time")
    print(f"bertrt profile: {config.model_name} | {cpu.model} | ISA {cpu.isa} | {threads} threads | {clock_name}")
    results = {}
    for precision in config.precisions or ["fp32"]:
        engine = bertrt.load(config.model_dir, device="cpu", kernels=config.kernels,
                             dtype="bfloat16" if precision == "bf16" else "float32")
        if precision in INT8_PRECISIONS:
            quantize_int8(engine, precision, config.model_dir)
        for spec in config.shapes:
            inputs = make_inputs(spec, config.model_dir / "vocab.txt", config.seed,
                                 engine.config.max_position_embeddings)
            result = profile_run(engine, inputs.packed, repeats=config.repeats, warmup=config.warmup, clock=clock)
            results[f"{precision} {spec.name}"] = result
            print(format_profile(f"{precision} {spec.name}", result))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile-{config.model_name}.json"
    path.write_text(json.dumps({"cpu": cpu.model, "isa": cpu.isa, "threads": threads, "clock": clock_name,
                                "results": results}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0
