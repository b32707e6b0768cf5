"""bertrt on Ray Data: batch inference with an actor pool, one engine per actor loaded once.

    from bertrt.integrations import ray as bertrt_ray   # the public API (re-exports this module)
    ds = bertrt_ray.embed_dataset(ray.data.read_parquet(...), model="path/to/model", concurrency=4)

Kept apart from ``bertrt.integrations.ray`` (the Serve app) and light on purpose: the actor classes
are defined here, so an actor process unpickles this module alone and pays for ``ray``, ``bertrt``,
numpy and torch, not for ``ray.serve``, FastAPI and ``bertrt.serving`` (~2 s on 2 cores) before its
first batch.

Thread budgets (used by the Serve replicas too): a replica or actor asks Ray for ``num_cpus``
(default: this machine's cores split evenly between the replicas / actors) and runs torch on exactly
the CPUs Ray assigned it, so several on one node split its cores instead of each starting one thread
per core.
"""

from __future__ import annotations

import logging
import os

import bertrt
import numpy as np
import ray  # optional dependency: bertrt[ray]; this module is imported only when used
import torch

log = logging.getLogger("bertrt.integrations.ray")


def local_cores() -> int:
    """CPU cores this process may run on (the container's, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_cores(workers: int, cores: int | None = None) -> int:
    """CPUs for each of ``workers`` replicas/actors sharing one machine: at least 1."""
    return max(1, (cores or local_cores()) // max(1, workers))


def apply_thread_budget(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads``, else to the CPUs Ray assigned this actor. Returns it."""
    if threads is None:
        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 0) if ray.is_initialized() else 0
        threads = max(1, int(assigned)) if assigned else torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def load_engine(model, load_options: dict, threads: int | None):
    """``bertrt.load(model, **load_options)`` on this actor's thread budget (see apply_thread_budget)."""
    threads = apply_thread_budget(threads)
    engine = bertrt.load(model, **load_options)
    log.info("replica engine %r on %d threads", engine, threads)
    return engine


class _EngineActor:
    """One engine per actor, loaded once; map_batches calls it with batches of rows."""

    def __init__(self, model, load_options: dict, column: str, task: str, threads: int | None):
        self.engine = load_engine(model, {**load_options, "task": task}, threads)
        self.column = column

    def texts(self, batch: dict) -> list[str]:
        return [str(t) for t in batch[self.column]]


class EmbedActor(_EngineActor):
    def __init__(self, model, load_options, column, output_column, threads):
        super().__init__(model, load_options, column, "embed", threads)
        self.output_column = output_column

    def __call__(self, batch: dict) -> dict:
        """batch[column]: (n,) texts -> batch[output_column]: (n, hidden) float32."""
        batch[self.output_column] = self.engine.embed(self.texts(batch))
        return batch


class ClassifyActor(_EngineActor):
    def __init__(self, model, load_options, column, threads):
        super().__init__(model, load_options, column, "classify", threads)

    def __call__(self, batch: dict) -> dict:
        """Adds ``label`` (n,) str, ``score`` (n,) float32 and ``scores`` (n, num_labels) float32
        in the order of the model's id2label."""
        results = self.engine.classify(self.texts(batch))
        labels = [self.engine.config.id2label[i] for i in sorted(self.engine.config.id2label)]
        batch["label"] = np.array([r["label"] for r in results], dtype=object)
        batch["score"] = np.array([r["score"] for r in results], dtype=np.float32)
        batch["scores"] = np.array([[r["scores"][label] for label in labels] for r in results], dtype=np.float32)
        return batch


def map_with_actors(ds, actor, constructor_args: tuple, batch_size: int, concurrency: int, num_cpus: float | None):
    """``ds.map_batches`` over ``concurrency`` instances of ``actor(*constructor_args, threads)``,
    each on ``num_cpus`` CPUs (default: the cores split between them) and as many torch threads."""
    num_cpus = split_cores(concurrency) if num_cpus is None else num_cpus
    threads = max(1, int(num_cpus))
    return ds.map_batches(
        actor,
        fn_constructor_args=(*constructor_args, threads),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
    )


def embed_dataset(ds, model=None, column: str = "text", batch_size: int = 256, concurrency: int = 1,
                  output_column: str = "embedding", num_cpus: float | None = None, **load_options):
    """``ds`` with an ``output_column`` of (hidden,) float32 embeddings of its ``column``, computed
    by ``concurrency`` actors each holding one engine (``bertrt.load(model, **load_options)``) on
    ``num_cpus`` CPUs (default: the cores split between the actors). Lazy, like every Dataset."""
    return map_with_actors(ds, EmbedActor, (model, load_options, column, output_column), batch_size, concurrency,
                           num_cpus)


def classify_dataset(ds, model=None, column: str = "text", batch_size: int = 256, concurrency: int = 1,
                     num_cpus: float | None = None, **load_options):
    """``ds`` with ``label``, ``score`` and ``scores`` columns (see ClassifyActor)."""
    return map_with_actors(ds, ClassifyActor, (model, load_options, column), batch_size, concurrency, num_cpus)
