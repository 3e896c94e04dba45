"""OpenAI's error shape on the OpenAI-compatible routes, and only there.

The API answers every error as ``{"error": {"code", "message", "field"?, "request_id"}}``
(:mod:`rag_app.server.errors`). OpenAI's SDKs read ``{"error": {"message", "type", "param", "code"}}``
and decide by the HTTP status what to raise and whether to retry (401 ``AuthenticationError``, 404
``NotFoundError``, 429/5xx retried, honouring ``Retry-After``). Errors on these routes come from many
places (the API-key check and the deadline in the request-context middleware, the body limit, the
routes, FastAPI's own 404/405), so rather than a second error mapping,
:class:`OpenAIErrorShapeMiddleware` reshapes the one mapping's JSON body on the way out, for OpenAI
paths only; the status and headers (``Retry-After``, ``WWW-Authenticate``, ``X-Request-ID``) stay as
they are, and so do access logs and metrics. The request id stays in the body too (``request_id``),
an extra key OpenAI clients ignore.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag_app.server.errors import ApiError

#: The OpenAI-compatible paths (exact, or a prefix ending in "/").
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/models/")

#: OpenAI's error ``type`` for each status (other 4xx: invalid_request_error, other 5xx: server_error).
_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def is_openai_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in OPENAI_PATHS)


def openai_error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(status: int, error: dict[str, Any]) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code", "request_id"}}`` from the API's error object."""
    return {
        "error": {
            "message": str(error.get("message", "")),
            "type": openai_error_type(status),
            "param": error.get("field"),
            "code": error.get("code"),
            "request_id": error.get("request_id"),
        }
    }


def openai_error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    """The OpenAI error body of ``error`` (what an in-stream error chunk carries)."""
    return openai_error(
        error.status,
        {"message": error.message, "field": error.field, "code": error.code, "request_id": request_id},
    )


def reshape(status: int, body: bytes) -> bytes | None:
    """``body`` in OpenAI's shape, or None when it is not the API's JSON error body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return None
    return json.dumps(openai_error(status, data["error"]), ensure_ascii=False).encode()


class OpenAIErrorShapeMiddleware:
    """Rewrites JSON error bodies (status >= 400) of OpenAI paths into OpenAI's error shape.

    Must sit outside the request-context middleware (added after it), so the 401s and 504s that
    middleware answers itself are reshaped too. Successful responses, streams included, pass untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_openai_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_reshaped(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and content_type.startswith("application/json"):
                    held = message  # wait for the body, then send both
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                body = reshape(held["status"], body) or body
                headers = MutableHeaders(scope=held)
                headers["content-length"] = str(len(body))
                start, held = held, None
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(message)

        await self.app(scope, receive, send_reshaped)


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, ...")
    param: str | None = Field(None, description="The request field at fault, e.g. messages[0].content.")
    code: str | None = Field(None, description="Stable code, e.g. model_not_found, invalid_request.")
    request_id: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


#: The error responses of the OpenAI routes, for the OpenAPI document.
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request (names the field in `param`)",
        401: "Missing or invalid API key",
        403: "Key not allowed for this model's site",
        404: "Unknown model",
        413: "Body too large",
        422: "Invalid request",
        503: "Overloaded (Retry-After) or a dependency is unavailable",
        504: "Deadline exceeded",
    }.items()
}
