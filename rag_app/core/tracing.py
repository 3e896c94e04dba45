"""OpenTelemetry traces: a span per request or library call, a child span per stage.

Span names: the server's request span is ``"<METHOD> <route template>"`` (``POST /v1/search``); a library
call without a server is ``rag.search`` or ``rag.ask``; under either, each stage that runs opens one
child: ``embed`` (query embedding), ``search`` (LanceDB), ``rerank``, ``lm`` (each LM call), and
``rewrite`` (a query rewrite, whose LM calls nest under it).

Why a :class:`Tracing` object and not OpenTelemetry's global provider: ``trace.set_tracer_provider``
takes effect once per process (a second call is refused with a warning), while a process here may hold
several owners of traces (tests build many apps and runtimes, each with its own exporter; a library user
may have a global provider of their own). So each owner (the app, the runtime) holds a ``Tracing`` with
its own provider and opens its root spans through it. A root span also binds its ``Tracing`` to the
context of the work (a context variable), and stage code deep in retrieval opens its child spans with
:func:`stage_span` without being handed a tracer. The stage threads inherit the binding because they run
in a copy of the request's context (``StageRunner`` and ``asyncio.to_thread`` both copy it). With tracing
off, or outside any root span, a stage span costs one context-variable read.

Exporting never slows or fails a request: with an endpoint, spans go through a ``BatchSpanProcessor``
(a bounded queue drained by a background thread; a full queue drops spans) to an OTLP/HTTP exporter
whose errors OpenTelemetry logs instead of raising. ``OTEL_*`` variables that only the OpenTelemetry SDK
reads (``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``) keep working: they tune the exporter, resource, sampler and queue, not where traces go.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from rag_app.core.settings import Settings

#: The instrumentation scope of every span this package opens.
SCOPE = "rag_app"
#: Appended to a collector's base URL (``OTEL_EXPORTER_OTLP_ENDPOINT`` is the base, per the OTLP spec).
TRACES_PATH = "/v1/traces"
#: How long :meth:`Tracing.flush` waits for queued spans by default (a shutdown must not hang on a
#: collector that is down).
FLUSH_TIMEOUT_MS = 5000

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
Attributes = Mapping[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class _Binding:
    """The tracer of the :class:`Tracing` that traces the current work, and the root span of that work."""

    tracer: Tracer
    root: Span


_binding: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar("rag_tracing", default=None)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base URL (``http://collector:4318`` ->
    ``http://collector:4318/v1/traces``); a URL that already names ``/v1/traces`` is used as it is."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _provider(service_name: str, processor: SpanProcessor) -> TracerProvider:
    """A provider whose spans say which service and which process of the fleet made them: the SDK's
    resource gives each process its own ``service.instance.id`` (one per server worker), and
    ``OTEL_RESOURCE_ATTRIBUTES`` (host, deployment, ...) is merged in under ``service.name``."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(processor)
    return provider


class Tracing:
    """Where one owner's spans go: an SDK ``TracerProvider`` it holds, or nowhere (:meth:`off`).

    Build it with :meth:`from_settings` (the app and the runtime do), :meth:`otlp`, or
    :meth:`to_exporter` (tests: an ``InMemorySpanExporter``). Nothing here touches the process-global
    provider, so any number of them can live in one process.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self._tracer = None if provider is None else provider.get_tracer(SCOPE)

    @classmethod
    def off(cls) -> Tracing:
        """No traces: root and stage spans are non-recording and cost next to nothing."""
        return cls(None)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """OTLP/HTTP export to ``otel_exporter_otlp_endpoint`` as ``otel_service_name``; off when unset."""
        endpoint = settings.otel_exporter_otlp_endpoint
        if not endpoint:
            return cls.off()
        return cls.otlp(endpoint, settings.otel_service_name)

    @classmethod
    def otlp(cls, endpoint: str, service_name: str, *, timeout_s: float | None = None) -> Tracing:
        """Batched OTLP/HTTP (protobuf) export to the collector at ``endpoint`` (its base URL).

        ``timeout_s`` bounds one export with its retries (default: the SDK's, 10 s, or
        ``OTEL_EXPORTER_OTLP_TIMEOUT``); it runs on the processor's thread, never on a request's.
        """
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=timeout_s)
        return cls(_provider(service_name, BatchSpanProcessor(exporter)))

    @classmethod
    def to_exporter(cls, exporter: SpanExporter, service_name: str = "rag-app") -> Tracing:
        """Hand every span to ``exporter`` as it ends (``SimpleSpanProcessor``, synchronous): for tests
        (``InMemorySpanExporter``) and local debugging (``ConsoleSpanExporter``), not for production."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return cls(_provider(service_name, SimpleSpanProcessor(exporter)))

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        carrier: Mapping[str, str] | None = None,
    ) -> Iterator[Span]:
        """The span of one unit of work (a request, a library call), current for all it calls.

        Inside work another ``Tracing`` already traces (the server's request calling the runtime), the
        span is a child of that work's and goes where its spans go, so one request stays one trace.
        ``carrier``: the request's headers; a W3C ``traceparent`` in them makes the span continue the
        caller's trace (a gateway's, another service's). With tracing off it yields a non-recording span.
        """
        if _binding.get() is not None:
            with stage_span(name, attributes, kind=kind) as span:
                yield span
            return
        if self._tracer is None:
            yield INVALID_SPAN
            return
        parent = None if carrier is None else _PROPAGATOR.extract(carrier)
        with self._tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=attributes
        ) as span:
            token = _binding.set(_Binding(self._tracer, span))
            try:
                yield span
            finally:
                _binding.reset(token)

    def flush(self, timeout_ms: int = FLUSH_TIMEOUT_MS) -> bool:
        """Export the queued spans now (end of a server's life, of a CLI run, of a test); ``False`` when
        they did not all go within ``timeout_ms`` (a collector that is down). Never raises."""
        if self.provider is None:
            return True
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop the export thread. Also done at interpreter exit; after it, spans are dropped."""
        if self.provider is not None:
            self.provider.shutdown()


@contextlib.contextmanager
def stage_span(
    name: str, attributes: Attributes | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    """A child span of the traced work this runs in (``embed``, ``search``, ``rerank``, ``lm``).

    Outside traced work it yields a non-recording span (``set_attribute`` on it does nothing), so stage
    code never asks whether tracing is on. An exception leaving the block is recorded on the span.
    """
    binding = _binding.get()
    if binding is None:
        yield INVALID_SPAN
        return
    with binding.tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
        yield span


def set_root_attributes(attributes: Attributes) -> None:
    """Set ``attributes`` on the root span of the traced work this runs in (nothing outside one).

    For what only a stage learns: the site a request searched is in its body, which the HTTP layer
    does not parse, but the retriever knows it.
    """
    binding = _binding.get()
    if binding is not None:
        binding.root.set_attributes(attributes)


__all__ = ["FLUSH_TIMEOUT_MS", "SCOPE", "Tracing", "set_root_attributes", "stage_span", "traces_url"]
