"""OpenTelemetry traces of the server's work, off by default (``bertrt serve --otel``).

When on, every request's tokenization and inference (time in the queue plus the batch's compute)
become spans under the active trace, with the model name, the task and the sizes as attributes.
The spans go to whatever TracerProvider the process has; ``configure()`` installs one that exports
over OTLP when ``opentelemetry-exporter-otlp`` is installed (the standard OTEL_EXPORTER_OTLP_*
variables apply), else to stderr. Off, ``span()`` costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("bertrt.serving")


class Tracing:
    def __init__(self, enabled: bool, model_name: str):
        self.enabled = enabled
        self.model_name = model_name
        self._tracer = None
        if enabled:
            from opentelemetry import trace  # opentelemetry-api: only when tracing is asked for

            self._tracer = trace.get_tracer("bertrt.serving")

    def span(self, name: str, **attributes):
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(
            name, attributes={"bertrt.model": self.model_name, **{f"bertrt.{k}": v for k, v in attributes.items()}})


def configure(service_name: str = "bertrt") -> None:
    """Install a TracerProvider for ``bertrt serve --otel`` (OTLP if its exporter is installed)."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:  # opentelemetry-sdk is optional
        raise SystemExit(f"bertrt serve --otel needs opentelemetry-sdk (pip install 'bertrt[otel]'): {exc}") from None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    except ImportError:
        log.warning("opentelemetry-exporter-otlp is not installed: spans go to stderr")
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
