"""The models one server holds: ``bertrt serve --model NAME=DIR ...`` or ``--model-repository DIR``.

Each model has its own ServerState (engine, batcher, queue, tokenizer thread, metrics series), all in
one Prometheus registry. Sharing the cores: the batches of all models take turns on one compute
semaphore (one batch at a time on a CPU, each on every core), so two models never oversubscribe the
cores; within a model, batching works as for one model (docs/serving.md, "Many models").

A repository (Triton-style) is a directory with one sub-directory per model; each may hold a
``bertrt.json`` with load options (``task``, ``dtype``, ``backend``, ``kernels``, ``batch_invariant``,
``max_length``) and batching options (``max_batch_tokens``, ``max_batch_size``, ``max_wait_ms``). The
KServe v2 repository extension lists them, and loads and unloads them at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from ..api import load as load_engine
from ..errors import InputError, ModelLoadError
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import ApiError
from .state import ServerState

LOAD_OPTIONS = {"task": str, "dtype": str, "backend": str, "kernels": str, "batch_invariant": bool,
                "max_length": int, "device": str}
BATCH_OPTIONS = {"max_batch_tokens": int, "max_batch_size": int, "max_wait_ms": (int, float)}
SETTINGS_FILE = "bertrt.json"


def read_settings(model_dir: Path) -> tuple[dict, dict]:
    """(load options, batching options) from ``model_dir/bertrt.json`` (both empty without one)."""
    path = Path(model_dir) / SETTINGS_FILE
    if not path.exists():
        return {}, {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: must hold a JSON object")
    load, batch = {}, {}
    for key, value in raw.items():
        kind = LOAD_OPTIONS.get(key) or BATCH_OPTIONS.get(key)
        if kind is None:
            raise ModelLoadError(f"{path}: unknown setting {key!r}; known: {sorted({**LOAD_OPTIONS, **BATCH_OPTIONS})}")
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise ModelLoadError(f"{path}: {key} must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
        (load if key in LOAD_OPTIONS else batch)[key] = value
    return load, batch


class ModelSet:
    """name -> ServerState; the first model added is the default (requests that name none)."""

    def __init__(self, config: ServeConfig, repository: str | Path | None = None, load_options: dict | None = None):
        self.config = config
        self.repository = Path(repository) if repository is not None else None
        self.load_options = load_options or {}
        self.states: dict[str, ServerState] = {}
        self.default: str | None = None
        self.compute = threading.Semaphore(max(1, config.workers))
        self.registry = CollectorRegistry()
        self.started = False
        self._lock = asyncio.Lock()

    def add(self, name: str, engine, batch_options: dict | None = None) -> ServerState:
        if name in self.states:
            raise InputError(f"two models are named {name!r}")
        config = dataclasses.replace(self.config, model_name=name, **(batch_options or {}))
        state = ServerState(engine, config, compute=self.compute, metrics=ServerMetrics(self.registry, name))
        self.states[name] = state
        self.default = self.default or name
        return state

    @property
    def names(self) -> list[str]:
        return list(self.states)

    def get(self, name: str | None) -> ServerState:
        """The model ``name`` (None: the default). With one model served, any name reaches it (clients
        often hard-code a model id); with several, an unknown name is a 404 naming the known ones."""
        if name is not None and not isinstance(name, str):
            raise ApiError(400, f"'model' must be a string, got {type(name).__name__}", param="model")
        if name is None or (len(self.states) == 1 and name not in self.states and self.repository is None):
            if self.default is None:
                raise ApiError(503, "no model is loaded", headers={"Retry-After": str(self.config.retry_after_s)})
            return self.states[self.default]
        state = self.states.get(name)
        if state is None:
            raise ApiError(404, f"unknown model {name!r}; this server serves: {', '.join(self.names) or 'none'}",
                           param="model")
        return state

    def named(self, name: str) -> ServerState:
        """The model ``name`` exactly (KServe v2 paths and gRPC always name it): 404 naming the known ones."""
        state = self.states.get(name)
        if state is None:
            raise ApiError(404, f"unknown model {name!r}; this server serves: {', '.join(self.names) or 'none'}")
        return state

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        for state in self.states.values():
            await state.start()
        self.started = True

    async def stop(self) -> None:
        for state in list(self.states.values()):
            await state.stop()

    def drain(self) -> None:
        for state in self.states.values():
            state.draining = True

    # -- repository extension ------------------------------------------------------------------------

    def index(self) -> list[dict]:
        entries = {name: {"name": name, "version": "1", "state": "READY" if s.ready else "UNAVAILABLE"}
                   for name, s in self.states.items()}
        if self.repository is not None:
            for path in sorted(p for p in self.repository.iterdir() if p.is_dir()):
                entries.setdefault(path.name, {"name": path.name, "version": "1", "state": "UNAVAILABLE",
                                               "reason": "not loaded"})
        return list(entries.values())

    async def load(self, name: str) -> ServerState:
        if self.repository is None:
            raise ApiError(400, "this server has no model repository (start it with --model-repository DIR)")
        path = self.repository / name
        if "/" in name or name.startswith(".") or not path.is_dir():
            raise ApiError(404, f"no model {name!r} in the repository {self.repository}")
        async with self._lock:
            if name in self.states:
                return self.states[name]
            try:
                engine, batch = await asyncio.get_running_loop().run_in_executor(None, load_model, path,
                                                                                 self.load_options)
            except (ModelLoadError, InputError) as exc:
                raise ApiError(400, f"model {name!r} failed to load: {exc}") from None
            state = self.add(name, engine, batch)
            await state.start()
            return state

    async def unload(self, name: str) -> None:
        async with self._lock:
            state = self.states.get(name)
            if state is None:
                raise ApiError(404, f"model {name!r} is not loaded; loaded: {', '.join(self.names) or 'none'}")
            state.draining = True
            await state.stop()
            del self.states[name]
            if self.default == name:
                self.default = next(iter(self.states), None)


def load_model(model_dir: Path, defaults: dict | None = None):
    """(Engine, batching options) for one model directory, its bertrt.json over ``defaults``."""
    load, batch = read_settings(model_dir)
    return load_engine(model_dir, **{**(defaults or {}), **load}), batch


def from_repository(repository: str | Path, config: ServeConfig, defaults: dict | None = None) -> ModelSet:
    """Every model of a repository directory, loaded now."""
    root = Path(repository)
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a directory")
    models = ModelSet(config, root, defaults)
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        engine, batch = load_model(path, defaults)
        models.add(path.name, engine, batch)
    if not models.states:
        raise ModelLoadError(f"model repository {root} holds no model directory")
    return models
