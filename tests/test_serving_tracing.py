"""OpenTelemetry spans of the server's work (opentelemetry-sdk's in-memory exporter), off by default."""

from __future__ import annotations

import bertrt
import pytest

from .serving_helpers import LiveServer

httpx = pytest.importorskip("httpx")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="opentelemetry-sdk is in the test extra")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXPORTER = InMemorySpanExporter()


def bertrt_spans() -> list:
    """bertrt's own spans (FastAPI may add its own to the same provider)."""
    return [span for span in EXPORTER.get_finished_spans() if "bertrt.model" in (span.attributes or {})]


@pytest.fixture(scope="module", autouse=True)
def provider():
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process, as a real server does
    yield provider


@pytest.fixture(scope="module")
def engine(minilm_dir):
    return bertrt.load(minilm_dir, device="cpu", batch_invariant=True)


def test_spans_for_tokenize_and_infer_when_on(engine):
    EXPORTER.clear()
    with LiveServer(engine, otel=True, model_name="traced") as server:
        answer = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["one text", "two texts"]}, timeout=30)
        assert answer.status_code == 200
    spans = {span.name: span for span in bertrt_spans()}
    assert {"tokenize", "infer"} <= set(spans)
    assert spans["infer"].attributes["bertrt.model"] == "traced"
    assert spans["infer"].attributes["bertrt.sequences"] == 2 and spans["infer"].attributes["bertrt.task"] == "embed"
    assert spans["infer"].attributes["bertrt.tokens"] > 4


def test_no_spans_when_off(engine):
    EXPORTER.clear()
    with LiveServer(engine) as server:
        assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "x"}, timeout=30).status_code == 200
    assert bertrt_spans() == []
