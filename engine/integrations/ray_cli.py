"""The command-line side of bertrt on Ray: ``bertrt serve --ray`` and ``bertrt embed --ray``.

``bertrt embed --ray --input data.parquet|data.jsonl --output out.parquet`` embeds a corpus with an
actor pool and writes ``out.parquet/`` as numbered shards of ``--shard-rows`` input rows each
(``part-00000.parquet``, ...: the input's columns plus ``embedding``). A shard is written to a
temporary name and renamed when complete, so a run that stops (crash, Ctrl-C, lost node) is resumed
by running the same command again: finished shards are kept and only missing ones are computed.

Ray is imported only inside these functions (optional dependency: bertrt[ray]), so the core CLI
works without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import InputError

log = logging.getLogger("bertrt.integrations.ray")
JOB_FILE = "_bertrt_embed.json"


def add_embed_arguments(p) -> None:
    """The ``bertrt embed`` flags of the Ray path."""
    p.add_argument("--ray", action="store_true", help="embed --input with a Ray Data actor pool into --output")
    p.add_argument("--input", default=None, help="with --ray: a .parquet or .jsonl file with a text column")
    p.add_argument("--output", default=None, help="with --ray: output directory of parquet shards")
    p.add_argument("--column", default="text", help="with --ray: the text column")
    p.add_argument("--shard-rows", type=int, default=10000, help="with --ray: input rows per output shard")
    p.add_argument("--batch-size", type=int, default=256, help="with --ray: texts per actor call")
    p.add_argument("--concurrency", type=int, default=None, help="with --ray: actors (default: one per node)")
    p.add_argument("--ray-address", default=None, help="with --ray: an existing cluster (default: start one here)")


def add_serve_arguments(p) -> None:
    """The ``bertrt serve`` flags of the Ray path."""
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve application (replicas of this server)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas, each with one engine")
    p.add_argument("--ray-address", default=None, help="with --ray: an existing cluster (default: start one here)")
    p.add_argument("--batching", default="bertrt", choices=("bertrt", "serve"), help="with --ray: batcher")


def _connect(address: str | None) -> None:
    import ray  # optional dependency: bertrt[ray]

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False) if address is None else ray.init(address=address)


def serve_on_ray(args, serve_config, load_options: dict) -> int:
    """Deploy build_app on the cluster and block until SIGINT/SIGTERM, then tear it down."""
    from ray import serve  # optional dependency: bertrt[ray]

    from .ray import build_app

    if args.replicas < 1:
        raise InputError(f"--replicas must be >= 1, got {args.replicas}")
    _connect(args.ray_address)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(args.model_dir, num_replicas=args.replicas, serve_config=serve_config, batching=args.batching,
                    **load_options)
    serve.run(app, name="bertrt", route_prefix="/")
    log.info("listening", extra={"fields": {"url": f"http://{args.host}:{args.port}", "replicas": args.replicas}})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.delete("bertrt")
    serve.shutdown()
    return 0


# -- offline corpus embedding ------------------------------------------------------------------------


def read_table(path: str):
    """The input as a pyarrow Table: parquet, or JSON lines (one object per line)."""
    import pyarrow.json as pa_json  # comes with ray[data]
    import pyarrow.parquet as pq

    suffix = Path(path).suffix.lower()
    if not Path(path).exists():
        raise InputError(f"--input {path} does not exist")
    if suffix == ".parquet" or Path(path).is_dir():
        return pq.read_table(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return pa_json.read_json(path)
    raise InputError(f"--input must be .parquet or .jsonl, got {path}")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _job(args, rows: int) -> dict:
    stat = os.stat(args.input)
    return {"input": str(Path(args.input).resolve()), "input_bytes": stat.st_size, "input_mtime": stat.st_mtime,
            "rows": rows, "shard_rows": args.shard_rows, "column": args.column,
            "model": str(args.model), "dtype": args.dtype}


def _check_job(output: Path, job: dict) -> None:
    """An output directory belongs to one job; resuming another job there would mix their shards."""
    path = output / JOB_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != job:
            changed = sorted(k for k in job if previous.get(k) != job[k])
            raise InputError(f"{output} holds shards of another job (differs in {', '.join(changed)}); "
                             f"use another --output or delete it")
    else:
        path.write_text(json.dumps(job, indent=1))


def embed_files(args) -> int:
    """``bertrt embed --ray``: see the module docstring. Returns the number of shards written now."""
    import pyarrow as pa
    import ray  # optional dependency: bertrt[ray]

    from .ray_data import embed_dataset  # not .ray: the embed path needs no Ray Serve

    if not args.input or not args.output:
        raise InputError("bertrt embed --ray needs --input FILE and --output DIR")
    if args.shard_rows < 1:
        raise InputError(f"--shard-rows must be >= 1, got {args.shard_rows}")
    table = read_table(args.input)
    if args.column not in table.column_names:
        raise InputError(f"--input {args.input} has no column {args.column!r} (it has {table.column_names})")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    _check_job(output, _job(args, table.num_rows))
    shards = math.ceil(table.num_rows / args.shard_rows)
    pending = [i for i in range(shards) if not (output / shard_name(i)).exists()]
    done_rows = table.num_rows - sum(_shard_length(i, table.num_rows, args.shard_rows) for i in pending)
    bar = tqdm(total=table.num_rows, initial=done_rows, unit="text", desc="bertrt embed", smoothing=0.1)
    if not pending:
        bar.close()
        return 0
    _connect(args.ray_address)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # shards follow input order
    starts = [i * args.shard_rows for i in pending]
    rows = np.concatenate([np.arange(s, s + _shard_length(i, table.num_rows, args.shard_rows))
                           for i, s in zip(pending, starts)])
    texts = pa.concat_arrays([table.column(args.column).slice(s, _shard_length(i, table.num_rows, args.shard_rows))
                              .combine_chunks() for i, s in zip(pending, starts)])
    ds = ray.data.from_arrow(pa.table({"_row": rows, args.column: texts}))
    concurrency, num_cpus = _pool(args.concurrency)
    load_options = {"dtype": args.dtype, "device": args.device, "backend": args.backend, "kernels": args.kernels}
    ds = embed_dataset(ds, args.model, column=args.column, batch_size=args.batch_size, concurrency=concurrency,
                       num_cpus=num_cpus, **load_options).select_columns(["_row", "embedding"])
    queue = iter(pending)
    current = next(queue)
    got_rows, got_vectors = [], []
    have = 0
    for batch in ds.iter_batches(batch_size=args.batch_size, batch_format="numpy"):
        got_rows.append(batch["_row"])
        got_vectors.append(batch["embedding"])
        have += len(batch["_row"])
        bar.update(len(batch["_row"]))
        while current is not None and have >= _shard_length(current, table.num_rows, args.shard_rows):
            size = _shard_length(current, table.num_rows, args.shard_rows)
            row_ids, vectors = np.concatenate(got_rows), np.concatenate(got_vectors)
            start = current * args.shard_rows
            _write_shard(output, current, start, table.slice(start, size), row_ids[:size], vectors[:size])
            got_rows, got_vectors, have = [row_ids[size:]], [vectors[size:]], have - size
            current = next(queue, None)
    bar.close()
    if current is not None:
        raise RuntimeError(f"the dataset ended before shard {current} was complete")
    return len(pending)


def _shard_length(index: int, rows: int, shard_rows: int) -> int:
    return min(shard_rows, rows - index * shard_rows)


def _write_shard(output: Path, index: int, start: int, source, row_ids, vectors) -> None:
    """source: the shard's input rows (from row ``start`` on); vectors: (rows, hidden) float32 for
    the rows ``row_ids`` that came back, which must be exactly those."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = np.arange(start, start + len(source))
    if not np.array_equal(row_ids, expected):  # order was not preserved: never write a mixed-up shard
        raise RuntimeError(f"shard {index}: rows came back out of order")
    hidden = vectors.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).reshape(-1)), hidden)
    table = source.append_column("embedding", column)
    temporary = output / f".{shard_name(index)}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, output / shard_name(index))


def _pool(concurrency: int | None) -> tuple[int, float]:
    """(actors, CPUs per actor): by default one actor per alive node, on the smallest node's CPUs."""
    import ray  # optional dependency: bertrt[ray]

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    smallest = min((n["Resources"]["CPU"] for n in nodes), default=1.0)
    if concurrency is None:
        return max(1, len(nodes)), smallest
    if concurrency < 1:
        raise InputError(f"--concurrency must be >= 1, got {concurrency}")
    total = sum(n["Resources"]["CPU"] for n in nodes) or 1.0
    return concurrency, max(1.0, total // concurrency)
