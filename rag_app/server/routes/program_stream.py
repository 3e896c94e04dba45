"""A program run whose events a streaming route reads on the event loop, with keep-alives.

Both streaming protocols of the API (the chat bridge's own Server-Sent Events,
:mod:`rag_app.server.routes.chat_stream`, and OpenAI's ``chat.completion.chunk`` stream,
:mod:`rag_app.server.routes.openai_stream`) run a site program the same way: in a worker thread under
the stage gates (:func:`~rag_app.server.routes.shared.run_program`), reporting through an
:class:`~rag_app.server.streaming.SSEEventSink`. :class:`ProgramStream` owns that run: it watches the
connection so a client that leaves stops the request's work, applies the request deadline while
streaming, and says when the stream has been silent for ``sse_keepalive_s`` seconds, so the route can
send a keep-alive comment (proxies and load balancers close connections that stay silent while
retrieval, reranking or the LM run). The routes only turn its items into their own wire format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from rag_app.answering.events import answer_events
from rag_app.server.errors import INTERNAL_MESSAGE, ApiError, note_error, to_api_error
from rag_app.server.limits import DeadlineExceeded
from rag_app.server.logging import request_id_var
from rag_app.server.routes.shared import request_scope, run_program
from rag_app.server.streaming import END, GONE, SSEEventSink

log = logging.getLogger("rag_app.server")

#: The SSE comment sent on a silent stream (clients ignore comment lines; proxies see traffic).
KEEPALIVE_FRAME = b": ping\n\n"

#: Headers every SSE response carries: no caching, no proxy buffering (nginx) of the events.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

#: An item of :meth:`ProgramStream.items`: ``("ping", None)``, ``("passages", [passage dicts])``,
#: ``("token", text)``, then ``("done", program output)`` or ``("error", exception)``.
StreamItem = tuple[str, Any]


async def wait_disconnect(request: Request) -> None:
    """Return once the client has disconnected (the body has been read: only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def stream_error(request: Request, exc: BaseException) -> ApiError:
    """The API error to send in-stream for ``exc`` (a generic 500 for bugs, logged with traceback)."""
    error = to_api_error(exc)
    if error is None:
        log.error("stream failed", exc_info=exc)
        error = ApiError(500, "internal_error", INTERNAL_MESSAGE)
    note_error(request.scope, error.code)
    return error


class ProgramStream:
    """One streamed program run: started on construction, read with :meth:`open` then :meth:`items`."""

    def __init__(
        self, request: Request, site: str, program: str, inputs: BaseModel, *, keepalive_s: float
    ) -> None:
        """Start ``site``/``program`` on ``inputs`` now. The task copies the current context, so what
        the caller set around this call (the event sink, DSPy settings) reaches the program's thread."""
        self.request = request
        self.keepalive_s = keepalive_s
        self.request_id = request_id_var.get()
        self.scope = request_scope(request)
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sink = SSEEventSink(asyncio.get_running_loop(), self.queue)
        reset = answer_events.set(self.sink)
        try:
            self.task = asyncio.create_task(run_program(request, site, program, inputs))
        finally:
            answer_events.reset(reset)
        self.task.add_done_callback(self._finished)
        # The client may leave while the request waits in a stage queue, when no event is being
        # written (so no failed write would tell): watch the connection itself for the whole stream.
        self.watcher = asyncio.create_task(wait_disconnect(request))
        self.watcher.add_done_callback(self._client_left)
        self._first: tuple[str, Any] | None = None

    # ------------------------------------------------------------------------------ callbacks
    def _finished(self, done: asyncio.Task[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved here; the stream reports it (or nobody is left to tell)
        self.queue.put_nowait((END, None))

    def _client_left(self, watch: asyncio.Task[None]) -> None:
        if not watch.cancelled() and watch.exception() is None:
            self.abandon()
            self.queue.put_nowait((GONE, None))

    def abandon(self) -> None:
        """No stage starts any more for this request: queued work leaves its queue without running, a
        running LM stream is cut at its next chunk (the sink is closed), the program task is cancelled."""
        self.scope.gone.set()
        self.sink.close()
        if not self.task.done():
            self.task.cancel()

    def close(self) -> None:
        self.watcher.cancel()
        self.abandon()

    # ------------------------------------------------------------------------------ reading
    async def open(self) -> bool:
        """Wait for the first event, at most one keep-alive interval; False when the client has left.

        Failures before then (an overload, a deadline, a bad input the program found) are raised, so
        the route answers them with their HTTP status. Once this returns True the response opens (200):
        later failures arrive in-stream. A run still silent after ``keepalive_s`` (waiting in a stage
        queue, or a slow retrieval) opens the stream with a keep-alive instead of waiting longer.
        """
        try:
            try:
                first = await asyncio.wait_for(self.queue.get(), self.keepalive_s)
            except TimeoutError:
                return True
            if first[0] == GONE:
                note_error(self.request.scope, "client_gone")
                self.watcher.cancel()
                return False
            if first[0] == END or self.scope.overloaded:
                await self.task  # raises (as an HTTP error) when the program failed or a stage turned it away
            self._first = first
            return True
        except BaseException:
            self.close()
            raise

    async def items(self) -> AsyncIterator[StreamItem]:
        """The run's items as they come (see :data:`StreamItem`), a ``ping`` after each silent
        ``keepalive_s``; a passed deadline ends it with ``("error", DeadlineExceeded)``. Ends without a
        final item when the client has left. Closes the run when done or abandoned."""
        item = self._first
        try:
            while True:
                if item is None:
                    yield ("ping", None)
                elif item[0] == END:
                    break
                elif item[0] == GONE:
                    note_error(self.request.scope, "client_gone")
                    return
                else:
                    yield item
                deadline = self.scope.deadline
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    yield ("error", DeadlineExceeded(self.scope.deadline_s))
                    return
                wait = self.keepalive_s if left is None else min(left, self.keepalive_s)
                try:
                    item = await asyncio.wait_for(self.queue.get(), wait)
                except TimeoutError:
                    item = None  # silent: a keep-alive (or, once past the deadline, the error above)
                    if deadline is not None and time.monotonic() >= deadline:
                        yield ("error", DeadlineExceeded(self.scope.deadline_s))
                        return
            try:
                output = self.task.result()
            except Exception as exc:
                yield ("error", exc)
                return
            yield ("done", output)
        finally:
            self.close()
