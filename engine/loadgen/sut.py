"""Systems under test: what runs a list of samples (a *target*) and the LoadGen SUT that feeds it.

A target turns sample indices into one response (bytes) per sample: embed -> float32 vector,
classify -> UTF-8 label name, qa -> UTF-8 JSON ``{"answer", "start", "end"}``. ``EngineTarget`` runs a
``bertrt.Engine`` in this process (any backend: bertrt's own, or ONNX Runtime through the same API);
``HttpTarget`` calls a running ``bertrt serve`` (KServe v2 ``infer`` for embed/classify, ``/v1/qa``).

``BatchingSUT`` queues what LoadGen issues and worker threads take up to ``batch_size`` queued samples at
a time (no waiting for more: a sample is batched only with those already queued), so Server queries
that arrive together share a batch and an Offline query runs as batches of ``batch_size`` in the
order LoadGen issued them (random lengths per batch, as a server would see them).
"""

from __future__ import annotations

import array
import json
import logging
import threading
from collections import deque

import numpy as np

from ..errors import BertrtError, InputError
from .dataset import Dataset

log = logging.getLogger("bertrt.loadgen")


class EngineTarget:
    """Runs samples on an in-process ``bertrt.Engine``."""

    def __init__(self, engine, dataset: Dataset):
        if dataset.task != "embed" and engine.task != dataset.task:
            raise InputError(f"the dataset is for {dataset.task}, the model's task is {engine.task}")
        self.engine, self.dataset = engine, dataset
        self.name = f"bertrt-{engine.backend}-{engine.precision}"

    def run(self, indices: list[int]) -> list[bytes]:
        data = self.dataset
        if data.task == "embed":
            vectors = self.engine.embed([data.texts[i] for i in indices])
            return [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in vectors]
        if data.task == "classify":
            results = self.engine.classify([data.texts[i] for i in indices])
            return [str(r["label"]).encode() for r in results]
        out = []
        for i in indices:
            answer = self.engine.qa(data.questions[i], data.contexts[i])
            out.append(json.dumps({k: answer[k] for k in ("answer", "start", "end")}).encode())
        return out


class HttpTarget:
    """Runs samples on a ``bertrt serve`` at ``url`` (one HTTP request per batch)."""

    def __init__(self, url: str, dataset: Dataset, timeout: float = 60.0):
        import httpx  # optional: the serve extra

        self.url, self.dataset = url.rstrip("/"), dataset
        self.local = threading.local()
        self.timeout = timeout
        try:
            models = httpx.get(f"{self.url}/v1/models", timeout=10).json()
            self.model = models["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise InputError(f"no bertrt server answers at {url}: {exc}") from None
        self.name = f"http-{self.model}"
        self._httpx = httpx

    def _client(self):
        if not hasattr(self.local, "client"):
            self.local.client = self._httpx.Client(base_url=self.url, timeout=self.timeout)
        return self.local.client

    def _post(self, path: str, body: dict) -> dict:
        reply = self._client().post(path, json=body)
        if reply.status_code != 200:
            raise BertrtError(f"POST {path}: HTTP {reply.status_code}: {reply.text[:300]}")
        return reply.json()

    def run(self, indices: list[int]) -> list[bytes]:
        data = self.dataset
        if data.task == "qa":
            out = []
            for i in indices:
                answer = self._post("/v1/qa", {"question": data.questions[i], "context": data.contexts[i]})
                out.append(json.dumps({k: answer[k] for k in ("answer", "start", "end")}).encode())
            return out
        output = "embedding" if data.task == "embed" else "label"
        texts = [data.texts[i] for i in indices]
        reply = self._post(f"/v2/models/{self.model}/infer", {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "outputs": [{"name": output}]})
        tensor = next(o for o in reply["outputs"] if o["name"] == output)
        if data.task == "classify":
            return [str(label).encode() for label in tensor["data"]]
        values = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        return [row.tobytes() for row in values]


class BatchingSUT:
    """A LoadGen SUT over ``target`` with ``workers`` threads taking up to ``batch_size`` samples each."""

    def __init__(self, target, batch_size: int = 32, workers: int = 1):
        import mlperf_loadgen as lg  # optional: the loadgen extra

        self.lg, self.target, self.batch_size = lg, target, batch_size
        self.pending: deque = deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.error: Exception | None = None
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"sut-{i}") for i in range(workers)]
        for thread in self.threads:
            thread.start()
        self.handle = lg.ConstructSUT(self.issue_query, self.flush_queries)

    def issue_query(self, samples) -> None:
        with self.ready:
            self.pending.extend((s.id, s.index) for s in samples)
            self.ready.notify(len(self.threads))

    def flush_queries(self) -> None:
        pass

    def _take(self) -> list[tuple[int, int]] | None:
        with self.ready:
            while not self.pending and not self.stopping:
                self.ready.wait()
            if self.stopping and not self.pending:
                return None
            count = min(self.batch_size, len(self.pending))
            return [self.pending.popleft() for _ in range(count)]

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                responses = self.target.run([index for _, index in batch])
            except Exception as exc:  # must still complete the samples, or LoadGen waits forever
                log.error("SUT %s failed: %s", self.target.name, exc)
                self.error = self.error or exc
                responses = [b""] * len(batch)
            buffers = [array.array("B", r) for r in responses]
            completed = []
            for (sample_id, _), buffer in zip(batch, buffers):
                address, length = buffer.buffer_info() if len(buffer) else (0, 0)
                completed.append(self.lg.QuerySampleResponse(sample_id, address, length))
            self.lg.QuerySamplesComplete(completed)

    def close(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        for thread in self.threads:
            thread.join(timeout=30)
        self.lg.DestroySUT(self.handle)
