"""bertrt on Ray: a Ray Serve application and Ray Data batch inference.

    from bertrt.integrations import ray as bertrt_ray
    serve.run(bertrt_ray.build_app(model="path/to/model", num_replicas=2))   # the `bertrt serve` API
    ds = bertrt_ray.embed_dataset(ray.data.read_parquet(...), model="path/to/model", concurrency=4)

Serve (here): each replica loads one engine and serves the app of ``bertrt serve``
(engine/serving/app.py, the same routes, limits and metrics), with batching inside the replica.
Data (engine/integrations/ray_data.py, re-exported here): an actor pool, one engine per actor loaded
once, fed by ``map_batches``; kept in its own module so that actors do not import Ray Serve.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ray import serve  # optional dependency: bertrt[ray]; this module is imported only when used

from ..serving import create_app
from ..serving.batcher import Draining, RequestTimeout
from ..serving.cli import model_name_for
from ..serving.config import ServeConfig
from .ray_data import (  # noqa: F401  (re-exported: the public API is bertrt.integrations.ray)
    ClassifyActor,
    EmbedActor,
    apply_thread_budget,
    classify_dataset,
    embed_dataset,
    load_engine,
    local_cores,
    split_cores,
)

log = logging.getLogger("bertrt.integrations.ray")
BATCHING = ("bertrt", "serve")


class ServeBatchQueue:
    """The batcher interface the routes use (``run``, ``start``, ``close``, ``depth``, ``active``),
    forming batches with Ray Serve's ``@serve.batch`` instead of bertrt's token-budget batcher: a
    batch closes at ``max_batch_size`` sequences or ``max_wait_ms``, whatever their lengths."""

    def __init__(self, engine, max_batch_size: int, max_wait_ms: float):
        self.engine = engine
        self.active = 0
        self.depth = 0
        self.queued_tokens = 0
        self.closing = False
        self._executor: ThreadPoolExecutor | None = None
        self._one = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_wait_ms / 1000.0)(
            self._run_many
        )

    @property
    def busy(self) -> bool:
        return self.active > 0

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bertrt-infer")

    async def close(self, drain_timeout: float = 30.0) -> None:
        self.closing = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _run_many(self, items: list[tuple]) -> list:
        """items: (ids, type_ids, task) per sequence; one output per item, in order."""
        outputs: list = [None] * len(items)
        self.active += 1
        try:
            for task in dict.fromkeys(item[2] for item in items):
                where = [i for i, item in enumerate(items) if item[2] == task]
                rows = await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    self.engine.run_encodings,
                    [list(items[i][0]) for i in where],
                    [list(items[i][1]) for i in where],
                    task,
                )
                for i, row in zip(where, rows):
                    outputs[i] = row
        finally:
            self.active -= 1
        return outputs

    async def run(self, ids, type_ids, task: str, timeout: float) -> list:
        if self.closing:
            raise Draining("server is shutting down")
        self.depth += len(ids)
        tokens = sum(len(seq) for seq in ids)
        self.queued_tokens += tokens
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(self._one((seq, types, task)) for seq, types in zip(ids, type_ids))), timeout
            )
        except asyncio.TimeoutError:
            raise RequestTimeout(f"request did not finish within {timeout:g} s") from None
        finally:
            self.depth -= len(ids)
            self.queued_tokens -= tokens


class BertrtReplica:
    """One Ray Serve replica: one engine, the ``bertrt serve`` ASGI app in front of it."""

    def __init__(self, model, load_options: dict, serve_config: ServeConfig, batching: str, threads: int | None):
        self.engine = load_engine(model, load_options, threads)
        self.serve_config = serve_config
        self.batching = batching

    def __serve_build_asgi_app__(self):
        app = create_app(self.engine, self.serve_config)
        if self.batching == "serve":
            config = self.serve_config
            app.state.bertrt.batcher = ServeBatchQueue(self.engine, config.max_batch_size, config.max_wait_ms)
        return app

    def check_health(self) -> None:
        """Ray Serve restarts a replica whose health check raises."""
        if self.engine is None:
            raise RuntimeError("engine not loaded")


def build_app(
    model=None,
    num_replicas: int | str | None = 1,
    ray_actor_options: dict | None = None,
    autoscaling_config: dict | None = None,
    serve_config: ServeConfig | None = None,
    batching: str = "bertrt",
    max_ongoing_requests: int = 256,
    name: str = "bertrt",
    **load_options,
):
    """A Ray Serve ``Application`` (for ``serve.run``) whose replicas each hold ``bertrt.load(model,
    **load_options)`` and answer the HTTP API of ``bertrt serve``.

    ray_actor_options: Ray resources of each replica; ``num_cpus`` defaults to this machine's cores
    split between the replicas, and the replica runs that many threads. batching: "bertrt" (the
    token-budget DynamicBatcher of ``bertrt serve``, the default; the two measured equal within
    noise on 2 cores, see docs/scale-out.md) or "serve" (``@serve.batch``). max_ongoing_requests:
    requests one replica takes at once; batches form only from requests a replica holds, so keep it
    well above one batch. The replicas answer a stalled request body 503 + Retry-After, not 408
    (``ServeConfig.body_timeout_status``; see docs/scale-out.md, "Failure behaviour").
    """
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    options = dict(ray_actor_options or {})
    if autoscaling_config is not None:
        num_replicas = "auto" if num_replicas in (None, 1) else num_replicas
        fixed = int(autoscaling_config.get("max_replicas", 1))
    else:
        fixed = int(num_replicas or 1)
    options.setdefault("num_cpus", split_cores(fixed))
    threads = max(1, int(options["num_cpus"])) if options["num_cpus"] >= 1 else 1
    # A body that never comes is not always the client's fault here: when a replica dies after reading
    # a request's body but before Ray's router saw it accept the request, the router retries the request
    # on another replica, whose read of the (already consumed) body stalls. Answer that 503 (retry), not 408.
    config = replace(serve_config or ServeConfig(model_name=_model_name(model)), body_timeout_status=503)
    deployment = serve.deployment(
        serve.ingress()(BertrtReplica),
        name=name,
        num_replicas=num_replicas,
        ray_actor_options=options,
        autoscaling_config=autoscaling_config,
        max_ongoing_requests=max_ongoing_requests,
        health_check_period_s=2,
    )
    return deployment.bind(str(model) if model is not None else None, load_options, config, batching, threads)


def app_builder(args: dict):
    """Entry for a Serve config file (``import_path: bertrt.integrations.ray:app_builder``): ``args``
    are build_app's keyword arguments (``model``, ``num_replicas``, ``dtype``, ...)."""
    args = dict(args)
    serve_config = args.pop("serve_config", None)
    if isinstance(serve_config, dict):
        args["serve_config"] = ServeConfig(**serve_config)
    return build_app(**args)


def _model_name(model) -> str:
    return model_name_for(None if model is None else str(model))
