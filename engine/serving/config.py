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
    otel: bool = False  # OpenTelemetry spans for tokenization and inference (engine/serving/tracing.py)

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_batch_size", "max_queue", "max_body_bytes", "max_inputs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.api_key is not None and not self.api_key.strip():
            # fail closed: an empty key (think --api-key "$UNSET_VAR") must not silently turn authentication off
            raise ValueError("the API key is empty or whitespace; give a real key, or none to serve without one")
