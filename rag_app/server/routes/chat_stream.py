"""The Server-Sent Events answer of ``POST /v1/chat-bridge`` with ``stream: true`` (the event loop side).

The program runs in a worker thread and reports through a
:class:`~rag_app.server.streaming.SSEEventSink` (the thread side);
:class:`~rag_app.server.routes.program_stream.ProgramStream` owns that run (client gone, deadline,
keep-alive timing) and :func:`stream_chat` turns its items into this route's SSE frames, with a
``: ping`` comment whenever the stream has been silent for ``sse_keepalive_s`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from rag_app.server.errors import error_body
from rag_app.server.logging import request_id_var
from rag_app.server.routes.feedback import record_answer
from rag_app.server.routes.program_stream import (
    KEEPALIVE_FRAME,
    SSE_HEADERS,
    ProgramStream,
    stream_error,
    wait_disconnect,
)
from rag_app.server.schemas import ChatResponse

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


def chat_payload(output: Any) -> dict[str, Any]:
    """The JSON answer of ``/v1/chat-bridge`` (:class:`ChatResponse`) from the chat program's output."""
    return ChatResponse(
        answer=output.answer,
        citations=output.citations,
        passages=output.passages,
        mode=output.mode,
        timings=output.timings,
        notes=output.notes,
        request_id=request_id_var.get(),
    ).model_dump(mode="json")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def stream_chat(request: Request, site: str, program: str, inputs: BaseModel) -> Response:
    """SSE: ``passages``, ``token`` events, then ``done`` (answer, citations, timings); ``error`` on failure.

    The program runs in a worker thread with a :class:`~rag_app.server.streaming.SSEEventSink`:
    ``passages`` goes out as soon as retrieval and reranking finish, before the LM answers; with an
    LM, each ``token`` is a text delta of the answer as the LM writes it; in extractive mode (or when
    nothing was streamed, e.g. a cached LM reply) the whole answer comes in one ``token``. Grounding
    runs after the LM, so ``done.answer`` is authoritative: clients render tokens live, then replace
    them with ``done.answer``. While nothing else is sent for ``sse_keepalive_s`` seconds, a ``: ping``
    comment is (SSE clients ignore comments).

    The response opens with the first event, or with a keep-alive once the run has been silent for
    ``sse_keepalive_s``: an overload (503) or deadline (504) before then keeps its HTTP status; after
    it, an error is sent as ``event: error`` with the usual ``{"error": {...}}`` body and the stream
    ends. The request deadline still applies while streaming.
    """
    stream = ProgramStream(
        request, site, program, inputs, keepalive_s=request.app.state.rag.settings.sse_keepalive_s
    )
    if not await stream.open():
        return Response(status_code=499)  # written to nobody; labels the access log and metrics
    request_id = stream.request_id

    async def events() -> AsyncIterator[bytes]:
        passages_sent, tokens = False, 0
        async for name, data in stream.items():
            if name == "ping":
                yield KEEPALIVE_FRAME
            elif name == "passages" and not passages_sent:
                passages_sent = True
                yield _sse("passages", {"passages": data, "request_id": request_id})
            elif name == "token":
                tokens += 1
                yield _sse("token", {"text": data})
            elif name == "error":
                yield _sse("error", error_body(stream_error(request, data), request_id))
            elif name == "done":
                await record_answer(request, site, program, inputs, data)  # rateable once `done` arrives
                payload = chat_payload(data)
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

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


__all__ = ["SSE_SCHEMA", "chat_payload", "stream_chat", "wait_disconnect"]
