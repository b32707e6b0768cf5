"""``bertrt serve [MODEL_DIR]``: the HTTP server on uvicorn, with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from . import models as models_mod
from .config import ServeConfig

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and the record's ``fields`` extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s %(fields)s", defaults={"fields": ""})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def model_name_for(path: str | None) -> str:
    if path is None:
        return DEFAULT_MODEL_NAME
    resolved = Path(path).resolve()
    return resolved.name if resolved.name not in ("model", "") else resolved.parent.name


def build_server(
    app,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
    log_level: str = "warning",
    graceful_timeout: float | None = 30.0,
):
    """A uvicorn.Server whose shutdown first marks the app draining (new requests 503, readiness
    fails), then lets accepted requests finish and the batcher drain in the lifespan shutdown."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.models.drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,
        log_config=None,
    )
    return DrainingServer(config)


def cmd_serve(args) -> int:
    configure_logging(args.log_format, args.log_level)
    if args.otel:
        from .tracing import configure

        configure()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import bertrt

    from .app import create_app

    api_key = args.api_key if args.api_key is not None else os.environ.get("BERTRT_API_KEY")
    if api_key is not None and not api_key.strip():
        source = "--api-key" if args.api_key is not None else "$BERTRT_API_KEY"
        print(f"bertrt serve: error: {source} is empty or whitespace, which would turn authentication off; "
              "give a real key, or leave it unset to serve without one", file=sys.stderr)
        return 2
    config = ServeConfig(
        model_name=args.model_name or model_name_for(args.model_dir),
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        workers=args.workers,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes,
        max_inputs=args.max_inputs,
        api_key=api_key,
        grpc_port=args.grpc_port,
        grpc_host=args.host,
        otel=args.otel,
    )
    load_options = dict(task=args.task, device=args.device, backend=args.backend, dtype=args.dtype,
                        kernels=args.kernels, max_length=args.max_length, batch_invariant=args.batch_invariant)
    if args.model_repository:
        if args.model_dir or args.model:
            raise SystemExit("bertrt serve: give --model-repository or models (positional / --model), not both")
        served = models_mod.from_repository(args.model_repository, config,
                                            {k: v for k, v in load_options.items() if v not in (None, False)})
    elif args.model:
        served = models_mod.ModelSet(config)
        for spec in args.model:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise SystemExit(f"bertrt serve: --model takes NAME=DIR, got {spec!r}")
            engine, batch = models_mod.load_model(Path(path), {k: v for k, v in load_options.items()
                                                             if v not in (None, False)})
            served.add(name, engine, batch)
    else:
        served = bertrt.load(args.model_dir, **load_options)
    for engine in ([served] if not isinstance(served, models_mod.ModelSet) else
                   [s.engine for s in served.states.values()]):
        if args.default_prompt_name:
            engine.set_default_prompt(args.default_prompt_name)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logging.getLogger("bertrt.serving").warning(
            "listening on %s without an API key", args.host, extra={"fields": {"host": args.host}}
        )
    server = build_server(
        create_app(served, config), args.host, args.port, log_level="warning", graceful_timeout=args.timeout
    )
    logging.getLogger("bertrt.serving").info(
        "listening", extra={"fields": {"url": f"http://{args.host}:{args.port}", "model": config.model_name}}
    )
    server.run()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="HTTP server: KServe v2, OpenAI embeddings, classify/ner/qa",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", nargs="?", default=None, help="checkpoint directory (default: bundled MiniLM)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="serve this model under NAME (repeat for several; each its own batcher and queue)")
    p.add_argument("--model-repository", default=None, metavar="DIR",
                   help="serve every sub-directory of DIR (Triton-style; optional bertrt.json per model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--task",
        default=None,
        choices=("embed", "classify", "ner", "qa"),
        help="task of the v2 model (default: the checkpoint's)",
    )
    p.add_argument("--model-name", default=None, help="name in v2 paths and OpenAI responses")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kernels", default="auto")
    p.add_argument("--batch-invariant", action="store_true",
                   help="kernels whose result for a text does not depend on the batch the server puts it in")
    p.add_argument("--grpc-port", type=int, default=None,
                   help="also serve KServe v2 gRPC (inference.GRPCInferenceService) on this port")
    p.add_argument("--otel", action="store_true", help="OpenTelemetry spans (needs opentelemetry-sdk; OTLP exporter "
                   "when opentelemetry-exporter-otlp is installed)")
    p.add_argument("--default-prompt-name", default=None,
                   help="prompt (config_sentence_transformers.json) used when a request names none")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default: the model's)")
    defaults = ServeConfig()
    p.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens)
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument(
        "--max-wait-ms", type=float, default=defaults.max_wait_ms, help="longest a sequence waits for a batch to fill"
    )
    p.add_argument(
        "--workers", type=int, default=defaults.workers,
        help="batches run at once on a CPU, sharing the cores (bertrt's CPU GEMMs only)",
    )
    p.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, help="sequences waiting before new requests get 503"
    )
    p.add_argument("--timeout", type=float, default=defaults.timeout_s, help="per-request seconds (504 after)")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    p.add_argument("--max-inputs", type=int, default=defaults.max_inputs, help="texts per request")
    p.add_argument("--api-key", default=None, help="require this key (default: $BERTRT_API_KEY, else none)")
    p.add_argument("--log-format", default="json", choices=("json", "text"))
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)
