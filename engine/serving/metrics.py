"""Prometheus metrics of one server, in its own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .batcher import BatchStats

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bertrt_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "bertrt_request_errors", "HTTP requests answered with a 4xx or 5xx status", ["endpoint", "code"], registry=r
        )
        self.rejected = Counter(
            "bertrt_rejected",
            "requests refused before inference (queue_full, draining, timeout)",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "bertrt_request_duration_seconds",
            "time from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("bertrt_requests_in_flight", "HTTP requests being handled", registry=r)
        self.queue_depth = Gauge("bertrt_queue_depth", "sequences waiting for a batch", registry=r)
        self.batch_size = Histogram(
            "bertrt_batch_size", "sequences per batch", ["task"], buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "bertrt_batch_tokens", "tokens per batch", ["task"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_duration = Histogram(
            "bertrt_batch_duration_seconds", "runner time per batch", ["task"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "bertrt_queue_wait_seconds",
            "time a sequence waits before its batch runs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

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
