"""The HTTP service: ``create_app(settings)`` builds the FastAPI app (OpenAPI docs at ``/docs``).

Routes
    ``POST /v1/chat-bridge``                 chat messages -> grounded answer (JSON, or SSE with ``stream``)
    ``POST /v1/programs/{site}/{program}``   a site program's typed ``Input`` -> its typed ``Output``
    ``POST /v1/search``                      retrieve + rerank only (both scores on every passage)
    ``GET  /v1/programs``                    the programs this key may call
    ``GET  /healthz``                        the process is up (always open)
    ``GET  /readyz``                         models loaded and warmed, index present, LM reachable (503 until)
    ``GET  /metrics``                        Prometheus text

Every error is ``{"error": {"code", "message", "field"?, "request_id"}}``; nothing else (no stack
trace) leaves the process. Middleware order, outermost first: CORS (only when ``cors_origins`` is
set), request context (request id, API key, deadline, catch-all, metrics, access log), body limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_app.answering.events import answer_events
from rag_app.core.errors import (
    EmbedderMismatchError,
    InputError,
    ModelNotAvailableError,
    RagError,
    ServiceUnavailableError,
)
from rag_app.core.settings import Settings
from rag_app.models.rerank import unavailable_note
from rag_app.server.auth import AuthError, KeyInfo
from rag_app.server.gates import RequestScope, request_scope_var
from rag_app.server.limits import ClientGone, DeadlineExceeded, Overloaded
from rag_app.server.logging import new_request_id, request_id_var
from rag_app.server.metrics import CONTENT_TYPE
from rag_app.server.schemas import (
    ERROR_RESPONSES,
    PROGRAM_INPUT_RULES,
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    HealthResponse,
    ProgramInputRules,
    ProgramsResponse,
    ReadyResponse,
    SearchRequest,
    SearchResponse,
    check_program_rules,
    parse_body,
    program_input_schema,
)
from rag_app.server.state import ServerState
from rag_app.server.streaming import END as STREAM_END
from rag_app.server.streaming import GONE as CLIENT_GONE
from rag_app.server.streaming import SSEEventSink

log = logging.getLogger("rag_app.server")
access_log = logging.getLogger("rag_app.server.access")

CHAT_PROGRAM = "chat_bridge"
#: Paths that never need an API key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Where request-body schemas live in the OpenAPI document (see :func:`_json_body`).
SCHEMA_REF = "#/components/schemas/{model}"
M = TypeVar("M", bound=BaseModel)
#: The ``text/event-stream`` body of ``POST /v1/chat-bridge`` with ``stream: true``, for the OpenAPI doc.
#: OpenAPI 3.1 / Schemathesis describe an event stream by the schema of one event (``event`` + ``data``).
SSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Server-Sent Events, each `event: NAME` + `data: JSON`: `passages` {passages, "
    "request_id} once, `token` {text} one or more times, then `done` {answer, citations, mode, timings, "
    "notes, request_id} (its answer is authoritative), or `error` {error: {code, message, field?, "
    "request_id}} ending the stream early.",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["passages", "token", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


# ============================================================================================ errors


class ApiError(Exception):
    """An error with its HTTP status, stable code, message and (optionally) the request field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def field_path(loc: Sequence[Any], skip_first: bool = True) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content``."""
    parts = list(loc[1:] if skip_first and loc and loc[0] in ("body", "path", "query", "header") else loc)
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(
    errors: Sequence[dict[str, Any]], *, skip_first: bool = True, rename: Any = None
) -> ApiError:
    """422 naming the first bad field; the message lists every problem (at most five)."""
    described = []
    first_field = None
    for err in errors[:5]:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            described.append(f"invalid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
            continue
        name = field_path(loc, skip_first)
        if rename is not None and name is not None:
            name = rename(name)
        if first_field is None:
            first_field = name
        msg = str(err.get("msg", "invalid value"))
        described.append(f"{name}: {msg}" if name else msg)
    if len(errors) > 5:
        described.append(f"and {len(errors) - 5} more")
    return ApiError(422, "invalid_request", "; ".join(described) or "invalid request", field=first_field)


def to_api_error(exc: BaseException) -> ApiError | None:
    """The API error an exception stands for; None for unexpected exceptions (bugs)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded):
        return ApiError(503, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, "deadline_exceeded", str(exc))
    if isinstance(exc, ClientGone):  # nobody reads it: the status only labels logs and metrics
        return ApiError(499, "client_gone", str(exc))
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return ApiError(exc.status, exc.code, exc.message, headers=headers)
    if isinstance(exc, InputError):
        return ApiError(400, "invalid_input", str(exc))
    if isinstance(exc, ModelNotAvailableError):
        return ApiError(503, "model_not_available", str(exc))
    if isinstance(exc, ServiceUnavailableError):
        return ApiError(503, "service_unavailable", str(exc))
    if isinstance(exc, EmbedderMismatchError):
        return ApiError(500, "index_mismatch", str(exc))
    if isinstance(exc, RagError):
        return ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}")
    return None


def error_response(error: ApiError) -> JSONResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field:
        body["field"] = error.field
    body["request_id"] = request_id_var.get()
    return JSONResponse({"error": body}, status_code=error.status, headers=error.headers)


def _remember_error(scope: Scope, code: str) -> None:
    scope.setdefault("state", {})["error_code"] = code


# ========================================================================================= middleware


def _route_label(scope: Scope) -> str:
    """The route template (bounded label set); for requests answered before routing (401, 413), the
    template their path would have matched; ``unmatched`` for unknown paths."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:
        for candidate in getattr(scope["app"].router, "routes", []):
            with contextlib.suppress(Exception):
                if candidate.matches(scope)[0] != Match.NONE:
                    route = candidate
                    break
    return getattr(route, "path", None) or "unmatched"


def _needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and (path.startswith("/v1/") or path == "/metrics")


class RequestContextMiddleware:
    """Request id, API key check, deadline (504), catch-all (500), metrics and one JSON access-log line."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        settings = self.state.settings
        headers = Headers(scope=scope)
        request_id = new_request_id(headers.get("x-request-id"))
        rid_token = request_id_var.set(request_id)
        scope_state = scope.setdefault("state", {})
        scope_state["request_id"] = request_id
        deadline_s = settings.request_deadline_s
        rscope = RequestScope(deadline=time.monotonic() + deadline_s, deadline_s=deadline_s)
        scope_state["rag_scope"] = rscope
        rs_token = request_scope_var.set(rscope)
        status = {"code": 0, "started": False}
        timeout = asyncio.timeout(deadline_s)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
                # A streaming body is bounded by its own deadline handling, not cut mid-event here.
                with contextlib.suppress(RuntimeError, AssertionError):  # not entered (early replies)
                    timeout.reschedule(None)
            await send(message)

        async def reply(error: ApiError) -> None:
            _remember_error(scope, error.code)
            await error_response(error)(scope, receive, send_with_id)

        try:
            if _needs_key(scope["path"]) and scope.get("method") != "OPTIONS":
                try:
                    scope_state["api_key"] = self.state.keys.check(headers.get("authorization"))
                except AuthError as exc:
                    await reply(to_api_error(exc))  # type: ignore[arg-type]
                    return
            async with timeout:
                await self.app(scope, receive, send_with_id)
        except TimeoutError:
            if timeout.expired() and not status["started"]:
                await reply(
                    ApiError(
                        504,
                        "deadline_exceeded",
                        f"the request did not finish within its deadline of {deadline_s:g}s "
                        "(request_deadline_s)",
                    )
                )
            elif not status["started"]:
                log.error("unhandled TimeoutError", exc_info=True)
                await reply(ApiError(500, "internal_error", "internal server error"))
            else:
                log.error("response cut short by an error after it started", exc_info=True)
        except Exception:
            log.error("unhandled error serving %s %s", scope.get("method"), scope.get("path"), exc_info=True)
            if not status["started"]:
                await reply(
                    ApiError(
                        500, "internal_error", "internal server error; the request id is in the server log"
                    )
                )
        finally:
            duration = time.perf_counter() - start
            route = _route_label(scope)
            code = status["code"] or 500
            metrics = self.state.metrics
            metrics.requests.labels(route, scope.get("method", ""), str(code)).inc()
            metrics.request_latency.labels(route).observe(duration)
            if code >= 400:
                metrics.errors.labels(scope_state.get("error_code") or f"http_{code}").inc()
            if route.startswith("/v1/") and code < 400:
                metrics.stage_latency.labels("total").observe(duration)
            timings = scope_state.get("timings") or {}
            access_log.info(
                "%s %s %d",
                scope.get("method"),
                scope.get("path"),
                code,
                extra={
                    "request_id": request_id,
                    "route": route,
                    "method": scope.get("method"),
                    "status": code,
                    "duration_ms": round(duration * 1000, 2),
                    "timings": {k: round(v, 2) for k, v in timings.items()},
                    "error_code": scope_state.get("error_code"),
                    "key": getattr(scope_state.get("api_key"), "name", None),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
            request_scope_var.reset(rs_token)
            request_id_var.reset(rid_token)


class BodyLimitMiddleware:
    """413 for bodies over ``max_body_bytes``: by Content-Length up front, else while reading the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int | None) -> ApiError:
        got = f"{size} bytes" if size is not None else "larger than that"
        return ApiError(
            413,
            "body_too_large",
            f"request body is {got}; the limit is {self.max_bytes} bytes (max_body_bytes)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                _remember_error(scope, "invalid_request")
                await error_response(ApiError(400, "invalid_request", "invalid Content-Length header"))(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                _remember_error(scope, "body_too_large")
                await error_response(self._too_large(size))(scope, receive, send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                _remember_error(scope, "body_too_large")
                await error_response(self._too_large(None))(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ============================================================================================ helpers


def _state(request: Request) -> ServerState:
    return request.app.state.rag


def _note_error(request: Request, code: str) -> None:
    request.scope.setdefault("state", {})["error_code"] = code


def check_site(state: ServerState, site: str, *, field: str | None = None) -> str:
    if site not in state.settings.sites:
        raise ApiError(
            404,
            "unknown_site",
            f"unknown site {site!r}; known sites: {', '.join(sorted(state.settings.sites))}",
            field=field,
        )
    return site


def check_program(state: ServerState, site: str, program: str, *, field: str | None = None) -> None:
    known = state.programs_index.get(site, [])
    if program not in known:
        raise ApiError(
            404,
            "unknown_program",
            f"site {site!r} has no program {program!r}; its programs: {', '.join(known) or 'none'}",
            field=field,
        )


def authorize(request: Request, site: str) -> KeyInfo | None:
    key: KeyInfo | None = request.scope.get("state", {}).get("api_key")
    if key is not None and not key.allows(site):
        raise ApiError(
            403,
            "forbidden",
            f"this API key ({key.name!r}) may not use site {site!r}; it is scoped to: {', '.join(key.sites)}",
        )
    return key


def _scope(request: Request) -> RequestScope:
    return request.scope["state"]["rag_scope"]


async def run_program(request: Request, site: str, name: str, inputs: BaseModel) -> Any:
    """Run a program in a worker thread under admission and per-stage limits; record its timings."""
    state = _state(request)
    program = await asyncio.to_thread(state.program, site, name)
    queued: dict[str, float] = {}
    output = await state.runner.run("request", program.run, inputs, timings=queued)
    scope = _scope(request)
    if scope.overloaded:  # a stage turned the program away and it degraded instead: still a 503
        raise scope.overloaded[0]
    extra = dict(queued)
    if "lm_ms" in scope.stage_ms:
        extra["lm_ms"] = scope.stage_ms["lm_ms"]
    timings = dict(getattr(output, "timings", {}) or {})
    for key, value in extra.items():
        if key not in timings:
            timings[key] = value
            with contextlib.suppress(Exception):
                output.timings[key] = value
    state.metrics.observe_timings(timings)
    request.scope["state"]["timings"] = timings
    return output


async def read_body(request: Request, model: type[M]) -> M:
    """The request body as ``model``, strictly typed (:func:`~rag_app.server.schemas.parse_body`); 422
    naming the first bad field otherwise. Routes read their bodies here rather than through FastAPI's
    (lax) body parameters, so ``stream: 0`` or ``limit: true`` are refused as the schema says."""
    try:
        return parse_body(model, await request.body())
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False), skip_first=False) from None


async def read_program_input(request: Request, model: type[M], rules: ProgramInputRules | None) -> M:
    """A program's Input from the body: strict types, then the server's rules for it (enums)."""
    inputs = await read_body(request, model)
    errors = check_program_rules(inputs, rules)
    if errors:
        raise validation_error(errors, skip_first=False)
    return inputs


def _json_body(component: str, description: str = "") -> dict[str, Any]:
    """``openapi_extra`` for a required JSON body whose schema is ``components/schemas/{component}``."""
    body: dict[str, Any] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": SCHEMA_REF.format(model=component)}}},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def _request_components(state: ServerState) -> dict[str, dict[str, Any]]:
    """Schemas of the chat and search bodies, with the limits and sites of this server's settings."""
    settings = state.settings
    out: dict[str, dict[str, Any]] = {}
    chat = ChatRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out.update(chat.pop("$defs", {}))
    chat["properties"]["messages"]["maxItems"] = settings.max_history_turns + 1
    out["ChatMessage"]["properties"]["content"]["maxLength"] = settings.max_message_chars
    chat_sites = sorted(site for site, names in state.programs_index.items() if CHAT_PROGRAM in names)
    if chat_sites:
        chat["properties"]["site"]["enum"] = chat_sites
    out["ChatRequest"] = chat
    search = SearchRequest.model_json_schema(ref_template=SCHEMA_REF, mode="validation")
    out.update(search.pop("$defs", {}))
    search["properties"]["query"]["maxLength"] = settings.max_query_chars
    search["properties"]["site"]["enum"] = sorted(settings.sites)
    out["SearchRequest"] = search
    return out


async def _wait_disconnect(request: Request) -> None:
    """Return once the client has disconnected (the body has been read: only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


# ================================================================================================ app


def create_app(settings: Settings, *, embedder: Any = None, reranker: Any = None) -> FastAPI:
    """The API over ``settings``' sites and programs.

    Starting it (the lifespan) loads and warms the embedder, opens and warms every site's index, loads
    and warms the reranker, builds the programs and probes the LM; ``/readyz`` answers 200 only once all
    of that succeeded. ``embedder``/``reranker`` replace the models ``settings`` name (tests pass test
    doubles; normally leave them unset).
    """
    state = ServerState(settings, embedder=embedder, reranker=reranker)

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
            yield
        finally:
            state.close()

    app = FastAPI(
        title="rag_app",
        version="0.1.0",
        summary="Grounded answers over the sites' content: chat bridge, site programs, retrieve + rerank.",
        lifespan=lifespan,
        responses={422: {"model": ErrorResponse, "description": "Validation error (names the field)"}},
    )
    app.state.rag = state

    # ------------------------------------------------------------------------------ error handlers
    async def handle_api_error(request: Request, exc: Exception) -> Response:
        error = to_api_error(exc)
        if error is None:  # pragma: no cover - only registered for mapped types
            raise exc
        if error.status >= 500 and not isinstance(exc, Overloaded | DeadlineExceeded | ApiError):
            log.warning("%s: %s", type(exc).__name__, exc)
        _note_error(request, error.code)
        return error_response(error)

    async def handle_validation(request: Request, exc: RequestValidationError) -> Response:
        error = validation_error(exc.errors())
        _note_error(request, error.code)
        return error_response(error)

    async def handle_http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        error = ApiError(
            exc.status_code,
            codes.get(exc.status_code, f"http_{exc.status_code}"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
        if exc.status_code == 404 and exc.detail == "Not Found":
            error.message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        _note_error(request, error.code)
        return error_response(error)

    # A pydantic ValidationError is not mapped here: request bodies are validated before programs run,
    # so one raised inside a program is a bug (generic 500, logged), not the client's fault.
    for exc_type in (ApiError, Overloaded, DeadlineExceeded, ClientGone, AuthError, RagError):
        app.add_exception_handler(exc_type, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, handle_http)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------ middleware
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, state=state)
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

    # ------------------------------------------------------------------------------ health
    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="The process is up")
    async def healthz() -> HealthResponse:
        return HealthResponse()

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["ops"],
        summary="Can serve requests: models loaded and warmed, indexes present (the LM state is reported)",
        description="200 once every request can be served; an unreachable LM does not make the server "
        "unready (answers are then extractive): `lm` and `answers` in the body say which.",
        responses={503: {"model": ReadyResponse, "description": "Not ready yet"}},
    )
    async def readyz() -> Response:
        if state.loaded:
            await asyncio.to_thread(state.check_lm)
        ready = state.ready
        state.metrics.ready.set(1 if ready else 0)
        lm, answers = state.lm_status
        body = ReadyResponse(ready=ready, lm=lm, answers=answers, checks=state.checks)
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}
        }
        | {code: ERROR_RESPONSES[code] for code in (401, 403)},
    )
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------------------ chat bridge
    @app.post(
        "/v1/chat-bridge",
        response_model=ChatResponse,
        tags=["chat"],
        responses={
            **ERROR_RESPONSES,
            200: {
                "description": "The answer as JSON, or with `stream: true` as Server-Sent Events",
                "content": {
                    "text/event-stream": {"schema": SSE_SCHEMA},
                },
            },
        },
        summary="Answer the last user message of a conversation (JSON, or SSE with stream=true)",
        openapi_extra=_json_body("ChatRequest"),
    )
    async def chat_bridge(request: Request) -> Response:
        """Answer the last user message, grounded in the site's passages, with inline [n] citations.

        With `stream: true` the answer comes as Server-Sent Events: `passages` (as soon as retrieval and
        reranking finish), then `token` events (the LM's answer text as it is written; in extractive
        mode the whole answer in one event), then `done` with `answer`, `citations`, `mode`, `timings`,
        `notes` and `request_id`. Grounding runs after the LM and may drop invalid citations or replace
        the answer with "Not found in the sources.", so `done.answer` is authoritative: render tokens
        live, then replace them with `done.answer`. Errors before the stream opens keep their HTTP
        status (503 overloaded, 504 deadline); later ones arrive as `event: error` (the JSON error
        body) and end the stream.
        """
        body = await read_body(request, ChatRequest)
        site = check_site(state, body.site, field="site")
        authorize(request, site)
        check_program(state, site, CHAT_PROGRAM, field="site")
        inputs = _chat_inputs(state, site, body)
        if body.stream:
            return await _stream_chat(request, site, inputs)
        output = await run_program(request, site, CHAT_PROGRAM, inputs)
        return JSONResponse(_chat_payload(output, request))

    # ------------------------------------------------------------------------------ search
    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        tags=["search"],
        responses=ERROR_RESPONSES,
        summary="Retrieve the top k passages and rerank them to the best top_n (no LM)",
        openapi_extra=_json_body("SearchRequest"),
    )
    async def search(request: Request) -> SearchResponse:
        body = await read_body(request, SearchRequest)
        site = check_site(state, body.site, field="site")
        authorize(request, site)
        if body.collection is not None and body.collection not in settings.sites[site]:
            raise ApiError(
                404,
                "unknown_collection",
                f"site {site!r} has no collection {body.collection!r}; its collections: "
                f"{', '.join(settings.sites[site])}",
                field="collection",
            )
        query = body.query.strip()
        if not query:
            raise ApiError(422, "invalid_request", "query: the query is blank", field="query")
        if len(query) > settings.max_query_chars:
            raise ApiError(
                422,
                "query_too_long",
                f"query: {len(query)} characters, over the limit of "
                f"{settings.max_query_chars} (max_query_chars)",
                field="query",
            )
        pipeline = await asyncio.to_thread(state.pipeline, site, body.collection)
        k = body.k
        top_n = body.top_n if body.top_n is not None else settings.rerank_top_n
        if k is not None:
            top_n = min(top_n, k)
        queued: dict[str, float] = {}
        pred = await state.runner.run(
            "request",
            pipeline,
            query=query,
            k=k,
            top_n=top_n,
            filters=body.filters,
            mode=body.mode,
            timings=queued,
        )
        rscope = _scope(request)
        if rscope.overloaded:
            raise rscope.overloaded[0]
        timings = {**pred.timings, **queued}
        state.metrics.observe_timings(timings)
        request.scope["state"]["timings"] = timings
        describe = state.reranker.describe()
        note = None if pred.reranked else unavailable_note(state.reranker)
        notes = [note] if note else []
        return SearchResponse(
            query=query,
            site=site,
            collection=body.collection,
            mode=str(getattr(pred, "mode", None) or body.mode or settings.search_mode),
            reranked=bool(pred.reranked),
            reranker=str(describe),
            passages=list(pred.passages),
            timings=timings,
            notes=notes,
            request_id=request_id_var.get(),
        )

    # ------------------------------------------------------------------------------ programs
    @app.get(
        "/v1/programs",
        response_model=ProgramsResponse,
        tags=["programs"],
        summary="Site programs this API key may call",
    )
    async def programs(request: Request) -> ProgramsResponse:
        key: KeyInfo | None = request.scope.get("state", {}).get("api_key")
        index = {
            site: names for site, names in state.programs_index.items() if key is None or key.allows(site)
        }
        return ProgramsResponse(programs=index)

    components = _add_program_routes(app, state)
    components.update(_request_components(state))

    def openapi() -> dict[str, Any]:
        """FastAPI's document plus the request-body schemas the routes read themselves."""
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in components.items():
                if name in schemas and schemas[name] != schema:
                    raise RuntimeError(f"two different OpenAPI schemas named {name!r}")
                schemas[name] = schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document

    @app.post(
        "/v1/programs/{site}/{program}",
        tags=["programs"],
        responses=ERROR_RESPONSES,
        summary="Run a site program (typed routes above document each program's Input and Output)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The program's Input (see its typed route)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    async def run_any_program(site: str, program: str, request: Request) -> Response:
        check_site(state, site)
        authorize(request, site)
        check_program(state, site, program)
        cls = await asyncio.to_thread(lambda: type(state.program(site, program)))
        inputs = await read_program_input(request, cls.Input, PROGRAM_INPUT_RULES.get((site, program)))
        output = await run_program(request, site, program, inputs)
        return JSONResponse(output.model_dump(mode="json"))

    return app


def _add_program_routes(app: FastAPI, state: ServerState) -> dict[str, dict[str, Any]]:
    """One typed route per program found at creation time, so /docs shows each Input and Output.

    Returns the Input schemas (OpenAPI components): each program's own, plus the server's rules for it
    (:data:`~rag_app.server.schemas.PROGRAM_INPUT_RULES`), which is what the route enforces.
    """
    from rag_app.answering.registry import list_programs, program_class

    components: dict[str, dict[str, Any]] = {}
    try:
        index = list_programs(state.settings)
    except Exception as exc:  # the generic route still answers; startup reports the problem
        log.warning("cannot list site programs for typed routes: %s: %s", type(exc).__name__, exc)
        return components
    state.programs_index = index
    for site, names in index.items():
        for name in names:
            cls = program_class(state.settings, site, name)
            rules = PROGRAM_INPUT_RULES.get((site, name))
            schema, defs = program_input_schema(cls.Input, rules, SCHEMA_REF)
            component = f"{site}.{name}.Input"
            for def_name, def_schema in defs.items():
                if components.setdefault(def_name, def_schema) != def_schema:
                    raise RuntimeError(f"two different program input schemas named {def_name!r}")
            components[component] = schema
            app.add_api_route(
                f"/v1/programs/{site}/{name}",
                _program_endpoint(site, name, cls.Input, rules),
                methods=["POST"],
                response_model=cls.Output,
                tags=["programs"],
                responses=ERROR_RESPONSES,
                name=f"{site}.{name}",
                summary=f"{site} / {name}",
                description=inspect.cleandoc(cls.__doc__ or ""),
                openapi_extra=_json_body(component),
            )
    return components


def _program_endpoint(site: str, name: str, model: type[BaseModel], rules: ProgramInputRules | None) -> Any:
    """The typed route's handler: a closure over the program, its Input model and the server's rules."""

    async def endpoint(request: Request) -> Any:
        authorize(request, site)
        inputs = await read_program_input(request, model, rules)
        return await run_program(request, site, name, inputs)

    endpoint.__name__ = f"program_{site}_{name}"
    return endpoint


# ============================================================================================ chat


def _chat_inputs(state: ServerState, site: str, body: ChatRequest) -> BaseModel:
    """Check the conversation and map it to the chat program's Input (message + history)."""
    settings = state.settings
    messages = body.messages
    last = len(messages) - 1
    if last > settings.max_history_turns:
        raise ApiError(
            422,
            "too_many_messages",
            f"messages: {len(messages)} messages, over the limit of {settings.max_history_turns + 1} "
            f"(max_history_turns={settings.max_history_turns} earlier turns plus the question)",
            field="messages",
        )
    for i, message in enumerate(messages):
        if len(message.content) > settings.max_message_chars:
            raise ApiError(
                422,
                "message_too_long",
                f"messages[{i}].content: {len(message.content)} characters, over the limit of "
                f"{settings.max_message_chars} (max_message_chars)",
                field=f"messages[{i}].content",
            )
    if messages[last].role != "user":
        raise ApiError(
            422,
            "invalid_request",
            f"messages[{last}].role: the last message must be the user's, got {messages[last].role!r}",
            field=f"messages[{last}].role",
        )
    from rag_app.answering.registry import program_class

    cls = program_class(settings, site, CHAT_PROGRAM)
    payload = {"message": messages[last].content, "history": [m.model_dump() for m in messages[:last]]}

    def rename(name: str) -> str:
        if name.startswith("message"):
            return f"messages[{last}].content" if name == "message" else name
        return name.replace("history[", "messages[", 1)

    try:
        return cls.Input.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False), skip_first=False, rename=rename) from None


def _chat_payload(output: Any, request: Request) -> dict[str, Any]:
    return ChatResponse(
        answer=output.answer,
        citations=output.citations,
        passages=output.passages,
        mode=output.mode,
        timings=output.timings,
        notes=output.notes,
        request_id=request_id_var.get(),
    ).model_dump(mode="json")


async def _stream_chat(request: Request, site: str, inputs: BaseModel) -> Response:
    """SSE: ``passages``, ``token`` events, then ``done`` (answer, citations, timings); ``error`` on failure.

    The chat program runs in a worker thread with a :class:`~rag_app.server.streaming.SSEEventSink`:
    ``passages`` goes out as soon as retrieval and reranking finish, before the LM answers; with an
    LM, each ``token`` is a text delta of the answer as the LM writes it; in extractive mode (or when
    nothing was streamed, e.g. a cached LM reply) the whole answer comes in one ``token``. Grounding
    runs after the LM, so ``done.answer`` is authoritative: clients render tokens live, then replace
    them with ``done.answer``.

    The response opens only with the first event: an overload (503) or deadline (504) before then
    keeps its HTTP status; after it, an error is sent as ``event: error`` with the usual
    ``{"error": {...}}`` body and the stream ends. The request deadline still applies while streaming.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    sink = SSEEventSink(loop, queue)
    reset = answer_events.set(sink)
    try:  # the task copies the context: the program's worker thread sees the sink
        task = asyncio.create_task(run_program(request, site, CHAT_PROGRAM, inputs))
    finally:
        answer_events.reset(reset)
    rscope = _scope(request)
    request_id = request_id_var.get()

    def finished(done: asyncio.Task[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here; the stream reports it (or nobody is left to tell)
        queue.put_nowait((STREAM_END, None))

    def abandon() -> None:
        """No stage starts any more for this request: queued work leaves its queue without running, a
        running LM stream is cut at its next chunk (the sink is closed), the program task is cancelled."""
        rscope.gone.set()
        sink.close()
        if not task.done():
            task.cancel()

    def client_left(watch: asyncio.Task[None]) -> None:
        if not watch.cancelled() and watch.exception() is None:
            abandon()
            queue.put_nowait((CLIENT_GONE, None))

    task.add_done_callback(finished)
    # The client may leave while the request waits in a stage queue, when no event is being written
    # (so no failed write would tell): watch the connection itself for the whole stream.
    watcher = asyncio.create_task(_wait_disconnect(request))
    watcher.add_done_callback(client_left)
    try:
        first = await queue.get()
        if first[0] == CLIENT_GONE:
            _note_error(request, "client_gone")
            watcher.cancel()
            return Response(status_code=499)  # written to nobody; labels the access log and metrics
        if first[0] == STREAM_END or rscope.overloaded:
            await task  # raises (as an HTTP error) when the program failed or a stage turned it away
    except BaseException:
        watcher.cancel()
        abandon()
        raise

    def error_event(exc: BaseException) -> bytes:
        error = to_api_error(exc)
        if error is None:
            log.error("chat stream failed", exc_info=exc)
            error = ApiError(
                500, "internal_error", "internal server error; the request id is in the server log"
            )
        _note_error(request, error.code)
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.field:
            body["field"] = error.field
        body["request_id"] = request_id
        return _sse("error", {"error": body})

    async def events() -> AsyncIterator[bytes]:
        item, passages_sent, tokens = first, False, 0
        try:
            while item[0] != STREAM_END:
                if item[0] == CLIENT_GONE:
                    _note_error(request, "client_gone")
                    return
                name, data = item
                if name == "passages" and not passages_sent:
                    passages_sent = True
                    yield _sse("passages", {"passages": data, "request_id": request_id})
                elif name == "token":
                    tokens += 1
                    yield _sse("token", {"text": data})
                left = None if rscope.deadline is None else max(0.0, rscope.deadline - time.monotonic())
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    yield error_event(DeadlineExceeded(rscope.deadline_s))
                    return
            try:
                output = task.result()
            except Exception as exc:
                yield error_event(exc)
                return
            payload = _chat_payload(output, request)
            if not passages_sent:
                yield _sse("passages", {"passages": payload["passages"], "request_id": request_id})
            if not tokens:
                yield _sse("token", {"text": payload["answer"]})
            yield _sse(
                "done",
                {
                    "answer": payload["answer"],
                    "citations": payload["citations"],
                    "mode": payload["mode"],
                    "timings": payload["timings"],
                    "notes": payload["notes"],
                    "request_id": request_id,
                },
            )
        finally:
            watcher.cancel()
            abandon()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
