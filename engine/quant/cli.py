"""``bertrt quantize MODEL_DIR --config int8-static --calib FILE --out DIR``."""

from __future__ import annotations

import argparse
import copy
import json
import sys

from ..errors import InputError
from ..model import load_checkpoint
from . import report as rep
from .api import quantize_
from .calibration import read_texts
from .checkpoint import save_quantized
from .configs import Bf16Config, Fp16Config, Int8DynamicConfig, Int8StaticConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a checkpoint (bf16, fp16, int8 dynamic/static) with a "
                              "fidelity report", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="fp32 checkpoint directory")
    p.add_argument("--config", default="int8-dynamic", choices=("bf16", "fp16", "int8-dynamic", "int8-static"))
    p.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration texts: one per line, or JSON lines with a 'text' field (int8-static, "
                        "and int8-dynamic with --smoothquant)")
    p.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"),
                   help="activation range calibration (int8-static)")
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--symmetric", action="store_true", help="symmetric activations (zero point 0; int8-static)")
    p.add_argument("--smoothquant", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant alpha in [0, 1] (needs --calib)")
    p.add_argument("--keep", action="append", default=[], metavar="PATTERN",
                   help="module kept in higher precision: embeddings, head, layer.N, qkv|attn_out|ffn_in|ffn_out, or "
                        "a glob on module names (repeatable)")
    p.add_argument("--kernel", default="auto", choices=("auto", "packed", "onednn", "op"), help="CPU int8 GEMM path")
    p.add_argument("--act-bits", type=int, default=8, choices=(8, 7),
                   help="activation bits for int8: 7 runs the AVX2 kernel ~1.6x faster at some fidelity cost")
    p.add_argument("--act-asymmetric", action="store_true",
                   help="int8-dynamic with --act-bits 7: a zero point per token over its own range")
    p.add_argument("--eval", default=None, metavar="FILE",
                   help="held-out texts for the report (JSON lines may carry a 'label'); default: none")
    p.add_argument("--no-latency", action="store_true", help="skip the fp32/bf16/quantized latency measurement")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoint + report)")
    p.set_defaults(func=cmd_quantize)


def build_config(args):
    keep = tuple(args.keep)
    if args.config == "bf16":
        return Bf16Config(keep=keep)
    if args.config == "fp16":
        return Fp16Config(keep=keep)
    if args.config == "int8-dynamic":
        return Int8DynamicConfig(keep=keep, kernel=args.kernel, act_bits=args.act_bits,
                                 act_symmetric=not args.act_asymmetric, smoothquant_alpha=args.smoothquant)
    return Int8StaticConfig(keep=keep, method=args.method, percentile=args.percentile, symmetric=args.symmetric,
                            smoothquant_alpha=args.smoothquant, kernel=args.kernel, act_bits=args.act_bits)


def cmd_quantize(args) -> int:
    if args.config != "int8-static" and args.method != "minmax":
        raise InputError("--method applies to --config int8-static only")
    if args.config not in ("int8-static", "int8-dynamic") and args.smoothquant is not None:
        raise InputError("--smoothquant applies to --config int8-static and int8-dynamic only")
    if args.act_asymmetric and args.config != "int8-dynamic":
        raise InputError("--act-asymmetric applies to --config int8-dynamic only")
    config = build_config(args)
    calib = None
    if args.config == "int8-static" or args.smoothquant is not None:
        if not args.calib:
            raise InputError(f"--config {args.config}{' --smoothquant' if args.smoothquant is not None else ''} "
                             f"needs --calib FILE (calibration texts)")
        calib, _ = read_texts(args.calib, "calibration file")
    eval_texts, labels = (read_texts(args.eval, "eval file") if args.eval else (None, None))
    checkpoint = load_checkpoint(args.model_dir)
    reference = copy.deepcopy(checkpoint.model) if eval_texts or not args.no_latency else None
    print(f"bertrt quantize: {args.model_dir} -> {args.out} ({config.name})", file=sys.stderr)
    model = quantize_(checkpoint, config, calibration=calib, progress=True)
    out = save_quantized(model, args.out, args.model_dir)
    summary = {"out": str(out), "config": config.to_dict()}
    if reference is not None:
        texts = eval_texts or (calib[:64] if calib else None)
        if texts is None:
            texts = ["The quick brown fox jumps over the lazy dog.", "Quantization keeps most of the accuracy."]
        report = rep.build(reference, model, checkpoint.tokenizer, texts, labels, args.model_dir, out,
                           latency=not args.no_latency)
        if not eval_texts:
            report["fidelity"]["note"] = "no --eval file: measured on calibration texts (optimistic)"
        js, md = rep.write(report, out)
        summary.update(report=str(js), markdown=str(md), fidelity=report["fidelity"],
                       layer_sqnr_db_min=report["layer_sqnr_db_min"], latency=report.get("latency"),
                       size_bytes=report.get("size_bytes"))
    print(json.dumps(summary, indent=1, default=lambda v: None))
    return 0


def main(argv=None) -> int:  # standalone use: python -m bertrt.quant.cli ...
    parser = argparse.ArgumentParser(prog="bertrt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
