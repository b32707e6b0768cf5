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

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
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
    p.add_argument("--ray-address", default=None,
                   help="with --ray: an existing cluster (default: $RAY_ADDRESS, else start one here)")


def add_serve_arguments(p) -> None:
    """The ``bertrt serve`` flags of the Ray path."""
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve application (replicas of this server)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas, each with one engine")
    p.add_argument("--ray-address", default=None,
                   help="with --ray: an existing cluster (default: $RAY_ADDRESS, else start one here)")
    p.add_argument("--batching", default="bertrt", choices=("bertrt", "serve"), help="with --ray: batcher")


def _connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (else at $RAY_ADDRESS), or start a local one: never
    silently join a cluster found on this machine, as ``ray.init()`` does with one from ``ray start``.
    True when this call started the cluster (then this process owns it and shuts it down)."""
    import ray  # optional dependency: bertrt[ray]

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(address="local", include_dashboard=False)
        return True
    ray.init(address=address)
    return False


def _on_stop_signals(handler) -> dict:
    """Set ``handler`` (one, or a dict signal -> handler) for SIGINT and SIGTERM; returns the previous ones."""
    handlers = handler if isinstance(handler, dict) else {sig: handler for sig in (signal.SIGINT, signal.SIGTERM)}
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


class _NotOnMainThread(logging.Filter):
    """Drops ray.init's warning that it set no SIGTERM handler off the main thread: on purpose here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class _Startup(threading.Thread):
    """Connects to (or starts) the cluster, starts Serve and runs the app off the main thread, so the
    main thread is free to take a signal at any point of the startup (a handler that raised into Ray's
    calls, e.g. a ``ray.get``, corrupts them; and ray.init, off the main thread, installs no SIGTERM
    handler of its own).

    The thread then waits for ``released``, set once the cluster is down: Ray starts its GCS and
    raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread* that started them exits."""

    def __init__(self, args, serve_config, load_options: dict):
        super().__init__(name="bertrt-ray-startup", daemon=True)
        self.args, self.serve_config, self.load_options = args, serve_config, load_options
        self.connected = threading.Event()  # ray.init returned (or failed): started_here is known
        self.settled = threading.Event()  # the startup is over: the app runs, or it failed or was stopped
        self.released = threading.Event()
        self.stopping = False  # set by the main thread: take no further step
        self.started_here = False  # this process started the local cluster, so it owns it
        self.serve_started = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001  (the main thread raises it, unless it stopped us)
            self.error = exc
        finally:
            self.connected.set()
            self.settled.set()
        self.released.wait()

    def _start(self) -> None:
        from ray import serve  # optional dependency: bertrt[ray]

        from .ray import build_app

        args = self.args
        self.started_here = _connect(args.ray_address)
        self.connected.set()
        if self.stopping:
            return
        self.serve_started = True
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_app(args.model_dir, num_replicas=args.replicas, serve_config=self.serve_config,
                        batching=args.batching, **self.load_options)
        if self.stopping:
            return
        serve.run(app, name="bertrt", route_prefix="/")
        log.info("listening", extra={"fields": {"url": f"http://{args.host}:{args.port}", "replicas": args.replicas}})


def _tear_down(startup: _Startup) -> None:
    """On the main thread, whatever the startup thread is doing (it may wait in ``serve.run`` for
    replicas that never come up: ``serve.shutdown`` ends that wait, deleting the app does not)."""
    import ray  # optional dependency: bertrt[ray]
    from ray import serve
    from ray.serve.exceptions import RayServeException

    startup.stopping = True
    startup.connected.wait(timeout=120)  # a signal during ray.init: let it finish, then undo it
    try:
        if startup.serve_started and ray.is_initialized():
            with contextlib.suppress(RayServeException):  # Serve was still starting
                serve.delete("bertrt")
            if not startup.started_here and not startup.settled.wait(timeout=30):
                log.warning("the app may still be deploying on %s; check `serve status`", startup.args.ray_address)
            elif not startup.started_here:
                with contextlib.suppress(RayServeException):  # it deployed after the first delete
                    serve.delete("bertrt")
            if startup.started_here or not serve.status().applications:
                serve.shutdown()
        startup.settled.wait(timeout=30)  # its Ray calls fail quickly once Serve is down
    finally:
        if startup.started_here:
            ray.shutdown()  # stops the raylet, GCS and workers this process started
        startup.released.set()


def serve_on_ray(args, serve_config, load_options: dict) -> int:
    """Deploy build_app on the cluster and block until SIGINT/SIGTERM, then tear down what this
    process set up: the app (``serve.delete``); Serve (``serve.shutdown``) unless other applications
    run on it; the local cluster (``ray.shutdown``: its raylet, GCS and workers) when it was started
    here, never a cluster given by ``--ray-address`` or $RAY_ADDRESS. Returns 0 after a signal, also
    one during the startup; a deployment that fails raises its error (after the same teardown)."""
    if args.replicas < 1:
        raise InputError(f"--replicas must be >= 1, got {args.replicas}")
    received: list[int] = []

    def on_signal(signum, frame) -> None:  # takes no lock: it runs between two bytecodes of the main thread
        received.append(signum)

    previous = _on_stop_signals(on_signal)
    quiet = _NotOnMainThread()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    startup = _Startup(args, serve_config, load_options)
    startup.start()
    ours_again = False
    try:
        while not received and not (startup.settled.is_set() and startup.error is not None):
            if startup.connected.is_set() and not ours_again:
                _on_stop_signals(on_signal)  # ray.init's core worker put a crash reporter in front of ours
                ours_again = True
            time.sleep(0.1)
        _on_stop_signals(signal.SIG_IGN)  # a second signal must not cut the teardown short (orphaned raylets)
        if received:
            log.info("stopping on %s", signal.Signals(received[0]).name)
        _tear_down(startup)
    finally:
        _on_stop_signals(previous)
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if startup.error is not None and not received:
        raise startup.error
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
