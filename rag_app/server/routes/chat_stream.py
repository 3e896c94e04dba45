"""The Server-Sent Events answer of ``POST /v1/chat-bridge`` with ``stream: true`` (the event loop side).

The program runs in a worker thread and reports through a
:class:`~rag_app.server.streaming.SSEEventSink` (the thread side); :func:`stream_chat` turns the
sink's queue into SSE frames, watches the connection so a client that leaves stops the request's
work, and applies the request deadline while streaming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from rag_app.answering.events import answer_events
from rag_app.server.errors import INTERNAL_MESSAGE, ApiError, error_body, note_error, to_api_error
from rag_app.server.limits import DeadlineExceeded
from rag_app.server.logging import request_id_var
from rag_app.server.routes.shared import request_scope, run_program
from rag_app.server.schemas import ChatResponse
from rag_app.server.streaming import END, GONE, SSEEventSink

log = logging.getLogger("rag_app.server")

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


async def wait_disconnect(request: Request) -> None:
    """Return once the client has disconnected (the body has been read: only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def stream_chat(request: Request, site: str, program: str, inputs: BaseModel) -> Response:
    """SSE: ``passages``, ``token`` events, then ``done`` (answer, citations, timings); ``error`` on failure.

    The program runs in a worker thread with a :class:`~rag_app.server.streaming.SSEEventSink`:
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
        task = asyncio.create_task(run_program(request, site, program, inputs))
    finally:
        answer_events.reset(reset)
    rscope = request_scope(request)
    request_id = request_id_var.get()

    def finished(done: asyncio.Task[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here; the stream reports it (or nobody is left to tell)
        queue.put_nowait((END, None))

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
            queue.put_nowait((GONE, None))

    task.add_done_callback(finished)
    # The client may leave while the request waits in a stage queue, when no event is being written
    # (so no failed write would tell): watch the connection itself for the whole stream.
    watcher = asyncio.create_task(wait_disconnect(request))
    watcher.add_done_callback(client_left)
    try:
        first = await queue.get()
        if first[0] == GONE:
            note_error(request.scope, "client_gone")
            watcher.cancel()
            return Response(status_code=499)  # written to nobody; labels the access log and metrics
        if first[0] == END or rscope.overloaded:
            await task  # raises (as an HTTP error) when the program failed or a stage turned it away
    except BaseException:
        watcher.cancel()
        abandon()
        raise

    def error_event(exc: BaseException) -> bytes:
        error = to_api_error(exc)
        if error is None:
            log.error("chat stream failed", exc_info=exc)
            error = ApiError(500, "internal_error", INTERNAL_MESSAGE)
        note_error(request.scope, error.code)
        return _sse("error", error_body(error, request_id))

    async def events() -> AsyncIterator[bytes]:
        item, passages_sent, tokens = first, False, 0
        try:
            while item[0] != END:
                if item[0] == GONE:
                    note_error(request.scope, "client_gone")
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
            payload = chat_payload(output)
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
