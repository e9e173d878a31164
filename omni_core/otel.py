"""Optional OpenTelemetry spans: webhook -> normalize -> route -> agent -> deliver.

Active only with the ``otel`` extra installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (the
standard OTLP/HTTP exporter variables apply). The trace context crosses the durable queue in
each job's payload (``traceparent``) and reaches the agent backend as a W3C ``traceparent``
header, so one trace follows a message through the hub and into Hive. Spans carry ids only,
never message content.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

log = structlog.get_logger("omni.otel")


def adopt_dotenv(values: Mapping[str, str]) -> list[str]:
    """Put the ``OTEL_*`` settings of a ``.env`` file into the process environment, where the
    OpenTelemetry SDK and its exporters read them; a variable already set in the environment
    wins, as for every other setting. Returns the names adopted."""
    adopted = [k for k, v in values.items() if k.startswith("OTEL_") and v and k not in os.environ]
    for name in adopted:
        os.environ[name] = values[name]
    return adopted


class Telemetry:
    def __init__(self, tracer: Any = None, propagator: Any = None, provider: Any = None) -> None:
        self.tracer = tracer
        self.propagator = propagator
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_env(cls, service_name: str = "omni-hub") -> Telemetry:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            log.warning("otel_unavailable", reason="install omni-core[otel] to export spans")
            return cls()
        name = os.environ.get("OTEL_SERVICE_NAME", service_name)
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("otel_enabled", endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
        return cls(provider.get_tracer("omni_core"), TraceContextTextMapPropagator(), provider)

    def span(
        self, name: str, parent: str | None = None, **attributes: Any
    ) -> contextlib.AbstractContextManager[str | None]:
        """A span (child of ``parent`` when given, else of the current span); yields its traceparent."""
        if self.tracer is None:
            return contextlib.nullcontext(parent)  # tracing off: no generator frame per span
        return self._span(name, parent, attributes)

    @contextlib.contextmanager
    def _span(self, name: str, parent: str | None, attributes: dict[str, Any]) -> Iterator[str | None]:
        context = self.propagator.extract({"traceparent": parent}) if parent else None
        attrs = {k: v for k, v in attributes.items() if v is not None}
        with self.tracer.start_as_current_span(name, context=context, attributes=attrs) as span:
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)
            try:
                yield carrier.get("traceparent")
            except Exception as exc:
                span.record_exception(exc)
                raise

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
