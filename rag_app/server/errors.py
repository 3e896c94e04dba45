"""The one mapping from errors to HTTP: status, stable code and the JSON error body.

Every error leaves as ``{"error": {"code", "message", "field"?, "request_id"}}`` and nothing else (no
stack trace). :func:`to_api_error` is the only place that decides which status and code a library or
server exception gets, so the same fault answers the same way on every route: what the request schema
rejects is a 422 (:func:`validation_error`), the library's :class:`~rag_app.core.errors.InputError`
(e.g. a query over ``max_query_chars``) is a 400 ``invalid_input``, wherever it is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from rag_app.core.errors import (
    EmbedderMismatchError,
    InputError,
    ModelNotAvailableError,
    RagError,
    ServiceUnavailableError,
)
from rag_app.server.auth import AuthError
from rag_app.server.limits import ClientGone, DeadlineExceeded, Overloaded
from rag_app.server.logging import request_id_var

log = logging.getLogger("rag_app.server")

#: The body of the 500 sent for an unexpected exception (the traceback goes to the log only).
INTERNAL_MESSAGE = "internal server error; the request id is in the server log"


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
    errors: Sequence[dict[str, Any]],
    *,
    skip_first: bool = True,
    rename: Callable[[str], str] | None = None,
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


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    """The ``{"error": {...}}`` body of ``error`` (also the data of an SSE ``error`` event)."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field:
        body["field"] = error.field
    body["request_id"] = request_id
    return {"error": body}


def error_response(error: ApiError) -> JSONResponse:
    body = error_body(error, request_id_var.get())
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def note_error(scope: Scope, code: str) -> None:
    """Remember the error code of this request for its access-log line and the error metric."""
    scope.setdefault("state", {})["error_code"] = code


# ========================================================================================== handlers


async def _handle_api_error(request: Request, exc: Exception) -> Response:
    error = to_api_error(exc)
    if error is None:  # pragma: no cover - only registered for mapped types
        raise exc
    if error.status >= 500 and not isinstance(exc, Overloaded | DeadlineExceeded | ApiError):
        log.warning("%s: %s", type(exc).__name__, exc)
    note_error(request.scope, error.code)
    return error_response(error)


async def _handle_validation(request: Request, exc: RequestValidationError) -> Response:
    error = validation_error(exc.errors())
    note_error(request.scope, error.code)
    return error_response(error)


async def _handle_http(request: Request, exc: StarletteHTTPException) -> Response:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
    error = ApiError(
        exc.status_code,
        codes.get(exc.status_code, f"http_{exc.status_code}"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )
    if exc.status_code == 404 and exc.detail == "Not Found":
        error.message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    note_error(request.scope, error.code)
    return error_response(error)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every mapped exception, FastAPI's validation errors and Starlette's HTTP errors as JSON.

    A pydantic ValidationError is not mapped: request bodies are validated before programs run, so one
    raised inside a program is a bug (generic 500, logged), not the client's fault.
    """
    for exc_type in (ApiError, Overloaded, DeadlineExceeded, ClientGone, AuthError, RagError):
        app.add_exception_handler(exc_type, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _handle_http)  # type: ignore[arg-type]
