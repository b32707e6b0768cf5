"""The ``bertrt`` command line: embed / classify / ner / qa / info, plus the subcommands other parts
of bertrt register (bench, serve, export, tune, quantize, finetune, distill).

Inputs come from arguments, ``--file`` (one text per line, or JSON lines with a "text" field) or
stdin; outputs are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
from collections.abc import Iterable

from .api import load
from .errors import BertrtError
from .integrations import ray_cli
from .model import load_checkpoint
from .ops import doctor, plan
from .runtime import policy, probe

# Modules that add subcommands through register(subparsers), and the subcommands each adds. A plugin
# that cannot be imported (an optional dependency missing) leaves stubs that explain why, so the core
# commands always work.
PLUGINS = {
    "bertrt.bench.cli": ("bench",),
    "bertrt.serving.cli": ("serve",),
    "bertrt.runtime.cli": ("export", "tune"),
    "bertrt.quant.cli": ("quantize",),
    "bertrt.train.cli": ("finetune", "distill"),
    "bertrt.loadgen.cli": ("loadgen",),
    "bertrt.task_cli": ("rerank", "fill-mask", "next-sentence", "embed-sparse"),
}


def _read_texts(args) -> list[str]:
    if args.text:
        return list(args.text)
    handle = open(args.file, encoding="utf-8") if args.file and args.file != "-" else sys.stdin
    with handle if handle is not sys.stdin else _nullcontext(handle):
        lines = [line.rstrip("\n") for line in handle]
    texts = []
    for number, line in enumerate(lines, 1):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"bertrt: line {number}: invalid JSON: {exc}") from None
            if not isinstance(record.get("text"), str):
                raise SystemExit(f"bertrt: line {number}: JSON object without a string 'text' field")
            texts.append(record["text"])
        elif line.strip():
            texts.append(line)
    return texts


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _finite(value):
    """NaN and infinities -> None: JSON has no NaN (json.dumps would write a bare NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _emit(records: Iterable[dict]) -> None:
    for record in records:
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        except ValueError:
            line = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)
        sys.stdout.write(line + "\n")


def _engine(args, task: str | None):
    return load(args.model, task=task, device=args.device, backend=args.backend, dtype=args.dtype,
                       kernels=args.kernels, batch_invariant=getattr(args, "batch_invariant", False))


def cmd_embed(args) -> int:
    if args.ray:
        ray_cli.embed_files(args)
        return 0
    texts = _read_texts(args)
    vectors = _engine(args, "embed").embed(texts, truncation=args.truncation)
    _emit({"text": t, "embedding": [round(float(x), 7) for x in v]} for t, v in zip(texts, vectors))
    return 0


def cmd_classify(args) -> int:
    texts = _read_texts(args)
    results = _engine(args, "classify").classify(texts, truncation=args.truncation)
    _emit({"text": t, **r} for t, r in zip(texts, results))
    return 0


def cmd_ner(args) -> int:
    texts = _read_texts(args)
    results = _engine(args, "ner").ner(texts, aggregation=args.aggregation, truncation=args.truncation)
    _emit({"text": t, "entities": r} for t, r in zip(texts, results))
    return 0


def cmd_qa(args) -> int:
    engine = _engine(args, "qa")
    context = args.context
    if args.context_file:
        with open(args.context_file, encoding="utf-8") as handle:
            context = handle.read()
    if context is None:
        raise SystemExit("bertrt qa: give --context or --context-file")
    _emit([{"question": args.question, **engine.qa(args.question, context, doc_stride=args.doc_stride)}])
    return 0


def cmd_info(args) -> int:
    report = probe.report()
    # the kernel plan bertrt.load would run here (measured once per machine, cached)
    engine = _engine(args, None)
    report["plan"] = {"model": str(engine.checkpoint.model_dir), "backend": engine.backend, **engine.plan.as_dict()}
    print(json.dumps(report, indent=2))
    return 0


def cmd_doctor(args) -> int:
    """Self-check and time every candidate implementation of every op on this machine."""
    checkpoint = load_checkpoint(args.model)
    precisions = tuple(dict.fromkeys(["float32", policy.choose_precision("cpu", args.dtype)]))
    table = doctor.rows(plan.model_shape_of(checkpoint.config), precisions)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(doctor.format_table(table))
    failed = [f"{r['op']}/{r['implementation']}{':' + r['isa'] if r['isa'] else ''}/{r['precision']}"
              for r in table if r["result"] != "pass"]
    if failed:
        print(f"disabled on this machine (failed their self-check): {', '.join(failed)}", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="checkpoint directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--backend", default="auto", help="auto | torch | onnxruntime | tensorrt | openvino")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--kernels", default="auto",
                   help="op kernels for the torch backend: auto (measured here) | torch | cpu[:isa] | cuda | triton")
    p.add_argument("--truncation", default="truncate",
                   choices=("truncate", "error", "longest_first", "only_first", "only_second"),
                   help="over-long input: cut (pairs: longest_first / only_first / only_second) or error")
    p.add_argument("--batch-invariant", action="store_true",
                   help="only kernels whose result for a text does not depend on its batch (bit-identical)")


def _text_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="*", help="texts (else --file or stdin)")
    p.add_argument("--file", "-f", default=None, help="one text per line, or JSON lines with a 'text' field")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertrt", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what bertrt decides and why")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (("embed", cmd_embed, "sentence embeddings"),
                                  ("classify", cmd_classify, "sequence classification"),
                                  ("ner", cmd_ner, "token classification (named entities)")):
        p = sub.add_parser(name, help=help_text)
        _common(p)
        _text_inputs(p)
        if name == "embed":
            ray_cli.add_embed_arguments(p)
        if name == "ner":
            p.add_argument("--aggregation", default="simple", choices=("none", "simple", "first", "average", "max"))
        p.set_defaults(func=func)
    p = sub.add_parser("qa", help="extractive question answering")
    _common(p)
    p.add_argument("question")
    p.add_argument("--context", default=None)
    p.add_argument("--context-file", default=None)
    p.add_argument("--doc-stride", type=int, default=None)
    p.set_defaults(func=cmd_qa)
    p = sub.add_parser("info", help="device probe: CPU ISA, GPUs, backends and kernels available, the kernel plan")
    _common(p)
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("doctor", help="self-check and time every kernel candidate on this machine")
    p.add_argument("--model", "-m", default=None, help="checkpoint whose shapes to time (default: bundled MiniLM)")
    p.add_argument("--dtype", default="auto", help="precision besides float32: auto | bfloat16 | float16")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_doctor)
    for module_name, commands in PLUGINS.items():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # keep the core CLI usable; the stub reports the failure when used
            for command in commands:
                stub = sub.add_parser(command, help=f"(unavailable: {exc})", add_help=False)
                stub.add_argument("rest", nargs=argparse.REMAINDER)
                stub.set_defaults(func=_unavailable(command, module_name, exc))
            continue
        module.register(sub)
    return parser


def _unavailable(command: str, module_name: str, exc: Exception):
    def handler(args) -> int:
        print(f"bertrt: {command} is unavailable: importing {module_name} failed: {exc}", file=sys.stderr)
        return 2

    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    try:
        return args.func(args) or 0
    except BertrtError as exc:
        print(f"bertrt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
