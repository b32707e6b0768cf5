"""Server settings: batching, limits and security, with the defaults ``bertrt serve`` uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits answer 413 (body bytes, inputs per request) or 400 (per-sequence tokens with
    truncate=false); a full queue answers 503 with Retry-After; a request past ``timeout_s`` 504."""

    model_name: str = "model"
    # Dynamic batching: a batch closes when it holds max_batch_tokens tokens or max_batch_size
    # sequences, or max_wait_ms after its oldest sequence arrived, whichever comes first.
    max_batch_tokens: int = 8192
    max_batch_size: int = 256
    max_wait_ms: float = 2.0
    # Batches that run at once, each on its share of the CPU cores (engines on bertrt's CPU GEMMs
    # only). On the 2-core development machine 2 measured no faster than 1, with a longer p99 tail
    # (docs/serving.md), so 1 is the default. See engine/serving/batcher.py.
    workers: int = 1
    # Backpressure: sequences waiting (not yet in a running batch) before new requests get 503.
    max_queue: int = 1024
    timeout_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 256  # texts or token-id rows in one request
    api_key: str | None = None
    retry_after_s: int = 1
    # KServe v2 gRPC beside HTTP (same batcher, limits, key and metrics); None: HTTP only, 0: a free port
    grpc_port: int | None = None
    grpc_host: str = "127.0.0.1"
    # Bounded work (docs/serving.md, "Limits"): tokens admitted and not yet running (being tokenized,
    # or waiting for a batch); a request that could never fit answers 413, one that does not fit now 503
    max_queue_tokens: int = 262144
    tokenizer_workers: int = 2  # threads tokenizing requests, in parallel with inference
    max_age_ms: float = 200.0  # a sequence waiting longer goes ahead of shorter ones (no starvation)
    # HTTP hygiene: slow or stalled clients are cut off; beyond max_connections new ones get 503
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0  # longest wait for the next piece of a request body (408 after)
    # What a stalled body answers: 408 (the client is slow). Behind Ray Serve 503 + Retry-After
    # (build_app): there a body is also lost when Ray retries on another replica a request whose first
    # replica died after reading it, and that is no fault of the client.
    body_timeout_status: int = 408
    idle_timeout_s: float = 5.0  # keep-alive connections idle this long are closed
    max_connections: int = 1024
    otel: bool = False  # OpenTelemetry spans for tokenization and inference (engine/serving/tracing.py)

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_batch_size", "max_queue", "max_body_bytes", "max_inputs",
                     "max_queue_tokens", "tokenizer_workers", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("timeout_s", "header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.body_timeout_status != 408 and not 500 <= self.body_timeout_status <= 599:
            raise ValueError(f"body_timeout_status must be 408 or a 5xx, got {self.body_timeout_status}")
        if self.api_key is not None and not self.api_key.strip():
            # fail closed: an empty key (think --api-key "$UNSET_VAR") must not silently turn authentication off
            raise ValueError("the API key is empty or whitespace; give a real key, or none to serve without one")
