"""OpenTelemetry traces: a span per request or library call, a child span per stage.

Real parts: the app under uvicorn on loopback (``LiveServer``), a LanceDB index of the BuildDaily sample
resources embedded by the bundled MiniLM, the tiny random-weight cross-encoder (``tiny_models``), the
OpenTelemetry SDK with its ``InMemorySpanExporter``, and the real OTLP/HTTP exporter posting to
:class:`OtlpReceiver`, a tiny loopback HTTP server that records what it is sent (a STAND-IN for an
OpenTelemetry collector). LMs: the loopback Ollama STAND-IN (``tests/ollama_standin.py``) through the
real LiteLLM path, and ``dspy.utils.DummyLM`` for the library path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from dspy.utils import DummyLM
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rag_app.core.settings import Settings
from rag_app.core.tracing import Tracing, stage_span, traces_url
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import Embedder
from rag_app.runtime import Runtime
from rag_app.server.app import create_app
from tests.conftest import REPO_ROOT
from tests.live_server import LiveServer
from tests.ollama_standin import OllamaStandIn, dead_host, dspy_chat_reply

RESOURCES = REPO_ROOT / "data" / "builddaily" / "resources"
QUERY = "How long can a Forge job run?"
LM_MODEL = "ollama_chat/llama3.2"

pytestmark = pytest.mark.timeout(300)


# ============================================================================================ helpers


class OtlpReceiver:
    """STAND-IN for an OpenTelemetry collector: a loopback OTLP/HTTP endpoint that records each POST
    (path, content type, body) and answers 200 with an empty ``ExportTraceServiceResponse``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                posts.append((self.path, self.headers.get("content-type", ""), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="otlp-receiver")

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """``(resource attributes, span)`` for every span posted to ``/v1/traces``."""
        out = []
        for path, _, body in self.posts:
            assert path == "/v1/traces"
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                out += [(resource, s) for scope in resource_spans.scope_spans for s in scope.spans]
        return out


def wait_for(
    exporter: InMemorySpanExporter, done: Callable[[Sequence[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The exporter's spans once ``done`` holds: a request's span ends after its response was sent, so
    the client can see the response a moment before the span is exported."""
    limit = time.monotonic() + 30
    while True:
        spans = list(exporter.get_finished_spans())
        if done(spans) or time.monotonic() > limit:
            return spans
        time.sleep(0.02)


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == SpanKind.SERVER]


def descendants(root: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """The spans under ``root`` (any depth), in the order they ended."""
    ids = {root.context.span_id}
    found: list[ReadableSpan] = []
    grew = True
    while grew:
        grew = False
        for span in spans:
            if span.parent is not None and span.parent.span_id in ids and span.context.span_id not in ids:
                ids.add(span.context.span_id)
                found.append(span)
                grew = True
    return sorted(found, key=lambda s: s.end_time or 0)


def by_name(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, [s.name for s in spans]
    return matches[0]


def check_stage_spans(root: ReadableSpan, spans: Sequence[ReadableSpan], k: int, top_n: int) -> None:
    """``embed``, ``search`` and ``rerank`` are ``root``'s children in its trace, with their attributes."""
    stages = descendants(root, spans)
    embed, search, rerank = (by_name(stages, n) for n in ("embed", "search", "rerank"))
    for span in (embed, search, rerank):
        assert span.parent is not None and span.parent.span_id == root.context.span_id, span.name
        assert span.context.trace_id == root.context.trace_id
        assert span.status.status_code == StatusCode.UNSET
    assert embed.attributes["rag.embed.model"] and embed.attributes["rag.embed.texts"] == 1
    assert search.attributes["rag.site"] == "builddaily"
    assert tuple(search.attributes["rag.search.collections"]) == ("resources",)
    assert search.attributes["rag.search.k"] == k and search.attributes["rag.search.hits"] == k
    assert search.attributes["rag.search.mode"] in {"vector", "fts", "hybrid"}
    assert rerank.attributes["rag.rerank.candidates"] == k and rerank.attributes["rag.rerank.top_n"] == top_n
    assert rerank.attributes["rag.rerank.available"] is True
    assert rerank.attributes["rag.rerank.model"] and rerank.attributes["rag.rerank.backend"]
    assert embed.end_time <= search.start_time and search.end_time <= rerank.start_time  # type: ignore[operator]


# =========================================================================================== fixtures


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory: pytest.TempPathFactory, tiny_path: Path, minilm: Embedder) -> Settings:
    """Settings over an index of the BuildDaily resources (built once for this module); no LM."""
    root = tmp_path_factory.mktemp("tracing")
    settings = Settings(
        data_dir=root / "rag",
        programs_dir=REPO_ROOT / "programs",
        sites={"builddaily": ["resources"]},
        lm_model=None,
        lm_cache=False,
        reranker_model=str(tiny_path),
        reranker_revision=None,
        otel_exporter_otlp_endpoint=None,
    )
    report = ingest_paths(settings, "builddaily", "resources", [RESOURCES], embedder=minilm, progress=False)
    assert report.chunks_written > 20
    return settings


@pytest.fixture(scope="module")
def traced(base_settings: Settings, minilm: Embedder) -> Iterator[tuple[httpx.Client, InMemorySpanExporter]]:
    """The app with an in-memory span exporter and the Ollama STAND-IN as its LM."""
    exporter = InMemorySpanExporter()
    reply = dspy_chat_reply(answer="A single Forge job can run for at most 6 hours [1].")
    with OllamaStandIn(chat_responder=lambda request: reply) as ollama:
        settings = base_settings.model_copy(
            update={"lm_model": LM_MODEL, "ollama_host": ollama.host, "lm_retries": 0, "lm_timeout_s": 10}
        )
        app = create_app(settings, embedder=minilm, tracing=Tracing.to_exporter(exporter))
        with LiveServer(app) as server, server.client() as client:
            yield client, exporter


# ============================================================================================= server


def test_a_search_request_is_one_span_with_a_child_per_stage(
    traced: tuple[httpx.Client, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()  # the start-up warm-up ran outside any request: it made no spans
    r = client.post("/v1/search", json={"site": "builddaily", "query": QUERY, "k": 8, "top_n": 3})
    assert r.status_code == 200, r.text
    spans = wait_for(exporter, lambda s: bool(server_spans(s)))

    (request,) = server_spans(spans)
    assert request.name == "POST /v1/search" and request.parent is None
    assert request.attributes["rag.request_id"] == r.headers["x-request-id"] == r.json()["request_id"]
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.route"] == "/v1/search"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["rag.site"] == "builddaily"
    assert request.status.status_code == StatusCode.UNSET
    assert request.resource.attributes["service.name"] == "rag-app"
    check_stage_spans(request, spans, k=8, top_n=3)
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}, "nothing outside the request"
    assert "lm" not in {s.name for s in spans}, "search calls no LM"


def test_a_request_continues_the_callers_trace_and_records_its_outcome(
    traced: tuple[httpx.Client, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = client.post(
        "/v1/search",
        json={"site": "builddaily", "collection": "nope", "query": QUERY},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "caller-42"},
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "caller-42"
    (request,) = server_spans(wait_for(exporter, lambda s: bool(server_spans(s))))
    assert trace.format_trace_id(request.context.trace_id) == trace_id
    assert request.parent is not None and request.parent.is_remote
    assert trace.format_span_id(request.parent.span_id) == parent_id
    assert request.attributes["rag.request_id"] == "caller-42"
    assert request.attributes["http.response.status_code"] == 404
    assert request.attributes["rag.error_code"] == "unknown_collection"
    assert request.status.status_code == StatusCode.UNSET, "a 4xx is the client's error, not the service's"


def test_a_chat_request_with_an_lm_has_an_lm_span(traced: tuple[httpx.Client, InMemorySpanExporter]) -> None:
    client, exporter = traced
    exporter.clear()
    r = client.post("/v1/chat-bridge", json={"messages": [{"role": "user", "content": QUERY}]})
    assert r.status_code == 200, r.text
    spans = wait_for(exporter, lambda s: bool(server_spans(s)))
    (request,) = server_spans(spans)
    assert request.name == "POST /v1/chat-bridge"
    assert request.attributes["rag.request_id"] == r.headers["x-request-id"]
    stages = descendants(request, spans)
    names = [s.name for s in stages]
    assert {"embed", "search", "rerank", "lm"} <= set(names), names
    lm = by_name(stages, "lm")
    assert lm.attributes["gen_ai.request.model"] == LM_MODEL
    assert lm.context.trace_id == request.context.trace_id
    assert lm.start_time >= by_name(stages, "rerank").end_time  # type: ignore[operator]


# ============================================================================================ library


def test_runtime_search_and_ask_are_root_spans_of_their_stages(
    base_settings: Settings, minilm: Embedder
) -> None:
    exporter = InMemorySpanExporter()
    runtime = Runtime(
        base_settings,
        embedder=minilm,
        lm=DummyLM([{"answer": "A Forge job runs for at most 6 hours [1]."}] * 3),
        tracing=Tracing.to_exporter(exporter, service_name="rag-cli"),
    )
    result = runtime.search("builddaily", QUERY, k=6, top_n=2, rerank=True)
    assert len(result["passages"]) == 2
    spans = list(exporter.get_finished_spans())
    root = by_name(spans, "rag.search")
    assert root.parent is None and root.kind == SpanKind.INTERNAL
    assert root.attributes["rag.site"] == "builddaily" and root.attributes["rag.search.rerank"] is True
    assert root.resource.attributes["service.name"] == "rag-cli"
    check_stage_spans(root, spans, k=6, top_n=2)

    exporter.clear()
    runtime.ask("builddaily", "chat_bridge", QUERY)
    spans = list(exporter.get_finished_spans())
    root = by_name(spans, "rag.ask")
    assert root.parent is None and root.attributes["rag.program"] == "chat_bridge"
    stages = descendants(root, spans)
    assert {"embed", "search", "rerank", "lm"} <= {s.name for s in stages}
    assert by_name(stages, "lm").attributes["gen_ai.request.model"] == "dummy"
    assert len(stages) == len(spans) - 1, "every span of the call is under its root"


def test_without_an_endpoint_nothing_is_traced_and_no_provider_is_installed(base_settings: Settings) -> None:
    assert base_settings.otel_exporter_otlp_endpoint is None
    tracing = Tracing.from_settings(base_settings)
    assert not tracing.enabled and tracing.provider is None and tracing.flush() is True
    with tracing.span("rag.search") as span, stage_span("embed") as child:
        assert not span.is_recording() and not child.is_recording()
        assert not trace.get_current_span().get_span_context().is_valid
    runtime = Runtime(base_settings)
    assert not runtime.tracing.enabled
    # Neither this file's tracing nor the app's ever touched OpenTelemetry's process-global provider.
    assert not isinstance(trace.get_tracer_provider(), SdkTracerProvider)


def test_with_an_endpoint_spans_are_posted_to_the_collector(
    base_settings: Settings, minilm: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert traces_url("http://c:4318") == traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    with OtlpReceiver() as collector:
        # OpenTelemetry's own variable, as a collector's users already export it.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("RAG_OTEL_SERVICE_NAME", "rag-fleet-test")
        settings = Settings(
            **base_settings.model_dump(exclude={"otel_exporter_otlp_endpoint", "otel_service_name"})
        )
        assert settings.otel_exporter_otlp_endpoint == collector.url
        runtime = Runtime(settings, embedder=minilm)
        try:
            assert runtime.tracing.enabled
            runtime.search("builddaily", QUERY, k=4, rerank=False)
            assert collector.posts == [], "batched: nothing is sent on the request's thread"
            assert runtime.tracing.flush() is True
        finally:
            runtime.tracing.shutdown()
        assert all(ctype == "application/x-protobuf" for _, ctype, _ in collector.posts)
        posted = collector.spans()
    assert {resource["service.name"] for resource, _ in posted} == {"rag-fleet-test"}
    assert all(resource["service.instance.id"] for resource, _ in posted), "one id per process of a fleet"
    names = {span.name for _, span in posted}
    assert {"rag.search", "embed", "search"} <= names and "rerank" not in names
    assert len({span.trace_id for _, span in posted}) == 1


def test_a_collector_that_is_down_never_fails_a_call(base_settings: Settings, minilm: Embedder) -> None:
    tracing = Tracing.otlp(dead_host(), "rag-app", timeout_s=1.0)
    runtime = Runtime(base_settings, embedder=minilm, tracing=tracing)
    try:
        result = runtime.search("builddaily", QUERY, k=4, rerank=False)
        assert len(result["passages"]) == 4
        tracing.flush(timeout_ms=3000)  # the export fails on the processor's thread; nothing raises here
    finally:
        tracing.shutdown()
