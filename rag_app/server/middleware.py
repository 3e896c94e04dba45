"""The two ASGI middlewares every request passes (outermost first, after CORS when it is on).

:class:`RequestContextMiddleware` gives the request its id and its trace span, checks its API key,
bounds it by its deadline (504), turns any unexpected exception into a 500, records metrics and writes
one JSON access-log line. :class:`BodyLimitMiddleware` refuses bodies over ``max_body_bytes`` (413) before a
route reads them. Both are plain ASGI (no ``BaseHTTPMiddleware``), so streaming responses pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_app.core.tracing import Tracing
from rag_app.server.auth import AuthError
from rag_app.server.errors import INTERNAL_MESSAGE, ApiError, error_response, note_error, to_api_error
from rag_app.server.gates import RequestScope, request_scope_var
from rag_app.server.logging import new_request_id, request_id_var
from rag_app.server.state import ServerState

log = logging.getLogger("rag_app.server")
access_log = logging.getLogger("rag_app.server.access")

#: Paths that never need an API key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _routes(router: Any) -> Iterator[Any]:
    """Every route of ``router``, including those of routers included into it (FastAPI wraps each
    included router in one entry; the app includes its routers without a prefix, so their routes'
    own paths are the full paths)."""
    for route in getattr(router, "routes", []):
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner)
        else:
            yield route


def _route_label(scope: Scope) -> str:
    """The route template (bounded label set); for requests answered before routing (401, 413), the
    template their path would have matched; ``unmatched`` for unknown paths."""
    route = scope.get("route")
    if route is None and scope.get("app") is not None:
        for candidate in _routes(scope["app"].router):
            with contextlib.suppress(Exception):
                if candidate.matches(scope)[0] != Match.NONE:
                    route = candidate
                    break
    return getattr(route, "path", None) or "unmatched"


def _needs_key(path: str) -> bool:
    return path not in OPEN_PATHS and (path.startswith("/v1/") or path == "/metrics")


def _end_request_span(span: Span, method: str, route: str, status: int, error_code: str | None) -> None:
    """Name the request span by its route template (known only after routing) and record the outcome;
    a 5xx is an error of this service, a 4xx the client's (left unset, as OpenTelemetry's HTTP
    conventions say)."""
    if not span.is_recording():
        return
    if route != "unmatched":
        span.update_name(f"{method} {route}")
    span.set_attributes({"http.route": route, "http.response.status_code": status})
    if error_code:
        span.set_attribute("rag.error_code", error_code)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR, error_code or f"http_{status}"))


class RequestContextMiddleware:
    """Request id, trace span, API key check, deadline (504), catch-all (500), metrics and one JSON
    access-log line.

    The request's span (``tracing``; a non-recording one when tracing is off) is current for everything
    the request runs, its worker threads included, so the stage spans are its children.
    """

    def __init__(self, app: ASGIApp, state: ServerState, tracing: Tracing | None = None) -> None:
        self.app = app
        self.state = state
        self.tracing = tracing or Tracing.off()

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
        method = scope.get("method", "")
        traced = contextlib.ExitStack()
        span = traced.enter_context(
            self.tracing.span(
                method,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.path": scope["path"],
                    "rag.request_id": request_id,
                },
                carrier=headers,
            )
        )
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
            note_error(scope, error.code)
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
                await reply(ApiError(500, "internal_error", INTERNAL_MESSAGE))
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
            _end_request_span(span, method, route, code, scope_state.get("error_code"))
            traced.close()
            request_scope_var.reset(rs_token)
            request_id_var.reset(rid_token)


class BodyLimitMiddleware:
    """413 for bodies over ``max_body_bytes``: by Content-Length up front, else while reading the stream.

    Uploads (the paths ``is_upload`` accepts: HTTP ingest) pass through unbuffered: their route bounds
    them by ``max_upload_bytes`` (413) while it streams them to disk (:mod:`rag_app.server.uploads`).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, *, is_upload: Callable[[str], bool] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.is_upload = is_upload

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
        if self.is_upload is not None and self.is_upload(scope["path"]):
            await self.app(scope, receive, send)  # the route bounds it by max_upload_bytes (413)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                note_error(scope, "invalid_request")
                await error_response(ApiError(400, "invalid_request", "invalid Content-Length header"))(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                note_error(scope, "body_too_large")
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
                note_error(scope, "body_too_large")
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
