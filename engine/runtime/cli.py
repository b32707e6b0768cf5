"""``bertrt export`` and ``bertrt tune`` (registered into the main CLI through ``register``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError
from ..model import load_checkpoint
from . import onnx_export, tensorrt_backend, tune


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX (or build a TensorRT engine)")
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    p.add_argument("--task", default=None, help="embed | classify | ner | qa (default: the checkpoint's own)")
    p.add_argument("--output", "-o", default=None,
                   help="output file (default: <model dir name>-<task>-<variant>.onnx|.plan in the current directory)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 weights and math, fp32 inputs/outputs")
    precision.add_argument("--int8", action="store_true", help="static int8 in QDQ form (calibrated MatMuls)")
    precision.add_argument("--fp8", action="store_true", help="float8 e4m3 QDQ (opset 19; for TensorRT on sm89+)")
    p.add_argument("--calibration", default=None,
                   help="texts for --int8/--fp8 calibration, one per line (default: synthetic token ids)")
    p.add_argument("--no-optimize", action="store_true",
                   help="keep standard ONNX ops (for TensorRT / OpenVINO); default fuses for ONNX Runtime")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("tune", help="measure backends x precisions here and store the fastest accurate one")
    p.add_argument("model_dir", nargs="?", default=None, help="checkpoint directory (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--task", default=None, help="embed | classify | ner | qa (default: the checkpoint's own)")
    p.add_argument("--candidates", default=None,
                   help="comma-separated backend/precision pairs (default: all eligible on this device)")
    p.add_argument("--gate", type=float, default=0.99, help="accuracy gate vs torch fp32 (cosine / agreement)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per shape (median reported)")
    p.add_argument("--force", action="store_true", help="re-measure even if a valid result is stored")
    p.set_defaults(func=cmd_tune)


def _variant(args) -> str:
    if args.int8:
        return "int8"
    if args.fp8:
        return "fp8"
    base = "fp16" if args.fp16 else "fp32"
    return base if args.no_optimize or args.format == "tensorrt" else base + "-ort"


def cmd_export(args) -> int:
    checkpoint = load_checkpoint(args.model_dir)
    task = args.task or checkpoint.config.task
    if task != "embed" and task != checkpoint.config.task:
        raise InputError(f"task {task!r} needs a checkpoint with that head; this one is "
                         f"{checkpoint.config.architecture}")
    texts = None
    if args.calibration:
        texts = [line.strip() for line in Path(args.calibration).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    variant = _variant(args)
    name = Path(args.model_dir).resolve().name
    if args.format == "tensorrt":
        return _export_tensorrt(checkpoint, task, args, name)
    output = Path(args.output or f"{name}-{task}-{variant}.onnx")
    result = onnx_export.export(checkpoint, output, task, variant, texts, check=not args.no_check)
    report = {"output": str(result.path), "task": task, "variant": variant, "opset": 19 if variant == "fp8" else
              onnx_export.OPSET, "fused_operators": {k: v for k, v in result.fused.items() if v}}
    if result.max_abs_diff is not None:
        report["max_abs_diff_vs_torch"] = result.max_abs_diff
    print(json.dumps(report, indent=2))
    return 0


def _export_tensorrt(checkpoint, task: str, args, name: str) -> int:
    reason = tensorrt_backend.available()
    if reason:
        print(f"bertrt export: TensorRT is unavailable: {reason}", file=sys.stderr)
        return 2
    precision = "int8" if args.int8 else "fp8" if args.fp8 else "float16" if args.fp16 else "float32"
    path = tensorrt_backend.cached_engine(checkpoint, task, precision, tensorrt_backend.Profile().clamp(
        checkpoint.config.max_position_embeddings))
    output = Path(args.output or f"{name}-{task}-{precision}.plan")
    output.write_bytes(path.read_bytes())
    print(json.dumps({"output": str(output), "task": task, "precision": precision, "cached": str(path)}, indent=2))
    return 0


def cmd_tune(args) -> int:
    candidates = None
    if args.candidates:
        candidates = []
        for item in args.candidates.split(","):
            backend, _, precision = item.strip().partition("/")
            if not precision:
                raise SystemExit(f"bertrt tune: candidate {item!r} is not backend/precision")
            candidates.append((backend, precision))
    record = tune.tune(args.model_dir, args.device, args.task, candidates, gate=args.gate, repeats=args.repeats,
                       force=args.force)
    table = {key: {"ms": r["ms"], "agreement": r["agreement"], "passed": r["passed"],
                   **({"error": r["error"]} if "error" in r else {})} for key, r in record["results"].items()}
    print(json.dumps({"device": record["device"], "fingerprint": record["fingerprint"],
                      "model_hash": record["model_hash"], "task": record["task"], "cached": record.get("cached", False),
                      "results": table, "skipped": record["skipped"],
                      "winners": {b: f"{w['backend']}/{w['precision']}" for b, w in record["winners"].items()}},
                     indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:  # for `python -m bertrt.runtime.cli`
    parser = argparse.ArgumentParser(prog="bertrt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
