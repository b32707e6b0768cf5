"""Prometheus metrics of a server, in its own registry (several apps can live in one process).

Every series carries a ``model`` label: the models of one server share one registry, each through
its own ``ServerMetrics(registry, model=NAME)``, whose attributes are already bound to that label
(``metrics.rejected.labels("queue_full")``, ``metrics.queue_depth.set(n)``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchStats

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)



class _ForModel:
    """A metric with its ``model`` label fixed: ``labels(*rest)`` fills the others."""

    def __init__(self, metric, model: str, more_labels: bool):
        self._metric, self._model = metric, model
        self._child = None if more_labels else metric.labels(model)

    def labels(self, *values):
        return self._metric.labels(self._model, *values)

    def __getattr__(self, name):  # inc / dec / set / observe on a metric without other labels
        return getattr(self._child, name)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, model: str = "model"):
        self.registry = registry or CollectorRegistry()
        self.model = model
        r = self.registry
        families = r.__dict__.setdefault("_bertrt_families", {})  # shared by the models of this registry

        def metric(kind, name, documentation, labels=(), **options):
            if name not in families:
                families[name] = kind(name, documentation, ["model", *labels], registry=r, **options)
            return _ForModel(families[name], model, bool(labels))

        self.requests = metric(Counter, "bertrt_requests", "HTTP requests answered, by endpoint and status code",
                               ["endpoint", "code"])
        self.errors = metric(Counter, "bertrt_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                             ["endpoint", "code"])
        self.rejected = metric(Counter, "bertrt_rejected",
                               "requests refused before inference (queue_full, draining, timeout)", ["reason"])
        self.latency = metric(Histogram, "bertrt_request_duration_seconds", "time from request to response",
                              ["endpoint"], buckets=LATENCY_BUCKETS)
        self.in_flight = metric(Gauge, "bertrt_requests_in_flight", "HTTP requests being handled")
        self.queue_depth = metric(Gauge, "bertrt_queue_depth", "sequences waiting for a batch")
        self.queue_tokens = metric(Gauge, "bertrt_queue_tokens", "tokens waiting for a batch")
        self.batch_size = metric(Histogram, "bertrt_batch_size", "sequences per batch", ["task"], buckets=SIZE_BUCKETS)
        self.batch_tokens = metric(Histogram, "bertrt_batch_tokens", "tokens per batch", ["task"],
                                   buckets=TOKEN_BUCKETS)
        self.batch_duration = metric(Histogram, "bertrt_batch_duration_seconds", "compute time per batch", ["task"],
                                     buckets=LATENCY_BUCKETS)
        self.queue_wait = metric(Histogram, "bertrt_queue_wait_seconds",
                                 "time a sequence waits in the queue before its batch runs", buckets=LATENCY_BUCKETS)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.task).observe(stats.size)
        self.batch_tokens.labels(stats.task).observe(stats.tokens)
        self.batch_duration.labels(stats.task).observe(stats.run_seconds)
        for wait in stats.queue_waits:
            self.queue_wait.observe(wait)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
