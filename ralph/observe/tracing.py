"""Optional OpenTelemetry spans: run, task, attempt, and inside it agent, checks, commit.

Only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the standard variable) and the extra
is installed (``pip install ralphd[otel]``) is anything imported or exported; otherwise
every span is a no-op. Spans carry the same figures as the events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import structlog

log = structlog.get_logger("ralph")

SetAttributes = Callable[..., None]


class Spans(Protocol):
    """Opens a span as a context manager; the value lets the body add attributes."""

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[SetAttributes]: ...

    def shutdown(self) -> None: ...


class NoSpans:
    """Tracing off: spans cost nothing."""

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[SetAttributes]:
        yield _ignore

    def shutdown(self) -> None:
        pass


def _ignore(**attributes: Any) -> None:
    pass


class OtelSpans:
    """Spans through an OpenTelemetry TracerProvider."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("ralph")

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[SetAttributes]:
        with self._tracer.start_as_current_span(name, attributes=_clean(attributes)) as span:

            def set_attributes(**more: Any) -> None:
                span.set_attributes(_clean(more))

            yield set_attributes

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor still holds


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int and float values; None means unknown, left out."""
    return {
        f"ralph.{key}": value if isinstance(value, str | bool | int | float) else str(value)
        for key, value in attributes.items()
        if value is not None
    }


def spans_from_environment(environ: Mapping[str, str], exporter: Any = None) -> Spans:
    """Spans exported over OTLP when the environment asks for it, else no-ops.

    ``exporter`` (a test's in-memory exporter) replaces OTLP and switches tracing on.
    """
    if exporter is None and not environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return NoSpans()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning(
            "ralph.tracing_unavailable",
            detail="OTEL_EXPORTER_OTLP_ENDPOINT is set but the extra is not installed: "
            "pip install 'ralphd[otel]'",
        )
        return NoSpans()
    provider = TracerProvider(resource=Resource.create({"service.name": "ralph"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return OtelSpans(provider)
