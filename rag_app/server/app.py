"""The HTTP service: ``create_app(settings)`` wires the FastAPI app (OpenAPI docs at ``/docs``).

Routes (one router module each, under :mod:`rag_app.server.routes`)
    ``POST /v1/chat-bridge``                 chat messages -> grounded answer (JSON, or SSE with ``stream``)
    ``POST /v1/programs/{site}/{program}``   a site program's typed ``Input`` -> its typed ``Output``
    ``POST /v1/search``                      retrieve + rerank only (both scores on every passage)
    ``POST /v1/chat/completions``            OpenAI-compatible chat (models: ``GET /v1/models``)
    ``POST /v1/rerank``                      the reranker as a service (Cohere/Infinity shape)
    ``POST /v1/feedback``                    rate an answer by its request id (feeds eval and optimize)
    ``POST|GET /v1/sites/{s}/collections/{c}/documents``  ingest (202 + job id), list; ``DELETE .../{id}``
    ``GET  /v1/jobs/{id}``                   an ingest job's status and per-document results
    ``POST /mcp``                            MCP tools list_sites, search, ask (streamable HTTP; bearer key)
    ``GET  /v1/programs``                    the programs this key may call
    ``GET  /healthz``                        the process is up (always open)
    ``GET  /readyz``                         models, indexes and programs loaded (the LM is reported)
    ``GET  /metrics``                        Prometheus text

Every error is ``{"error": {"code", "message", "field"?, "request_id"}}`` (:mod:`rag_app.server.errors`);
nothing else (no stack trace) leaves the process. Middleware order, outermost first: CORS (only when
``cors_origins`` is set), request context (request id, trace span, API key, deadline, catch-all,
metrics, access log), body limit (:mod:`rag_app.server.middleware`).

Traces (:mod:`rag_app.core.tracing`): with ``otel_exporter_otlp_endpoint`` set, every request is a
``SERVER`` span (``POST /v1/search``, attributes ``rag.request_id`` = the ``X-Request-ID`` answered,
``http.*``, ``rag.site``) continuing an incoming W3C ``traceparent``, with a child span per stage
(``embed``, ``search``, ``rerank``, ``lm``). Off otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from rag_app.core.settings import Settings
from rag_app.core.tracing import Tracing
from rag_app.server.errors import add_error_handlers
from rag_app.server.mcp_http import McpEndpoint
from rag_app.server.middleware import BodyLimitMiddleware, RequestContextMiddleware
from rag_app.server.openai_errors import OpenAIErrorShapeMiddleware
from rag_app.server.openapi import install_components
from rag_app.server.routes import chat, documents, feedback, ops, programs, rerank, search
from rag_app.server.routes import openai_chat as openai
from rag_app.server.schemas import ErrorResponse
from rag_app.server.state import ServerState
from rag_app.server.uploads import is_upload_path

log = logging.getLogger("rag_app.server")


def create_app(
    settings: Settings, *, embedder: Any = None, reranker: Any = None, tracing: Tracing | None = None
) -> FastAPI:
    """The API over ``settings``' sites and programs.

    Starting it (the lifespan) loads and warms the embedder, opens and warms every site's index, loads
    and warms the reranker, builds the programs and probes the LM; ``/readyz`` answers 200 only once all
    of that succeeded. ``embedder``/``reranker`` replace the models ``settings`` name (tests pass test
    doubles; normally leave them unset). ``tracing`` replaces the traces' destination built from
    ``settings`` (the runtime's: tests pass one with an in-memory exporter). Stopping the app flushes
    the queued spans (bounded: a collector that is down does not hold the shutdown).
    """
    state = ServerState(settings, embedder=embedder, reranker=reranker, tracing=tracing)
    tracing = state.runtime.tracing
    mcp = McpEndpoint(state)  # the MCP tools at /mcp; its session manager runs in the lifespan

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t0 = time.perf_counter()
        log.info("loading models and indexes", extra={"sites": sorted(settings.sites)})
        await asyncio.to_thread(state.load)
        state.metrics.ready.set(1 if state.ready else 0)
        auth = "on" if state.keys.required else "off (no API keys: serve only on loopback)"
        log.info(
            "ready" if state.ready else "started, NOT ready (see /readyz)",
            extra={
                "startup_ms": round((time.perf_counter() - t0) * 1000, 1),
                "auth": auth,
                "checks": {k: v.get("ok") for k, v in state.checks.items()},
            },
        )
        if not state.keys.required:
            log.warning("API key auth is OFF: no keys in %s", settings.keys_file)
        try:
            async with mcp.running():
                yield
        finally:
            await asyncio.to_thread(tracing.flush)
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="rag_app",
        version="0.1.0",
        summary="Grounded answers over the sites' content: chat bridge, site programs, retrieve + rerank.",
        lifespan=lifespan,
        responses={422: {"model": ErrorResponse, "description": "Validation error (names the field)"}},
    )
    app.state.rag = state  # what the routes' ``State`` dependency reads
    add_error_handlers(app)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, is_upload=is_upload_path)
    app.add_middleware(RequestContextMiddleware, state=state, tracing=tracing)
    app.add_middleware(OpenAIErrorShapeMiddleware)  # OpenAI's error shape on the OpenAI routes only
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )

    # The programs router is built first: it finds the programs, which the chat schema's sites need.
    programs_router, components = programs.programs_router(state)
    components.update(chat.chat_components(state))
    components.update(search.search_components(state))
    components.update(openai.openai_chat_components(state))
    components.update(rerank.rerank_components(state))
    app.include_router(ops.router)
    app.include_router(chat.router)
    app.include_router(search.router)
    app.include_router(programs_router)
    app.include_router(openai.router)
    app.include_router(rerank.router)
    app.include_router(feedback.feedback_router(state))
    app.include_router(documents.documents_router(state))  # its lifespan closes the ingest jobs
    app.router.routes.append(mcp.route)
    install_components(app, components, auth_required=lambda: state.keys.required)
    return app
