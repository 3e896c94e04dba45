"""The event sink behind ``POST /v1/chat-bridge`` with ``stream: true`` (Server-Sent Events).

:class:`SSEEventSink` is the request's :class:`~rag_app.answering.grounded.AnswerEvents`: the chat program,
running in a worker thread under the stage limits, reports its passages right after retrieval and
reranking, and its LM call streams the answer field's text deltas. Each event is handed to the
event loop with ``loop.call_soon_threadsafe(queue.put_nowait, (name, data))``;
:func:`rag_app.server.routes.chat_stream.stream_chat` turns the queue into SSE frames.

Token streaming uses DSPy's own machinery without ``dspy.streamify`` (which would run the program on
its own threads, outside the stage gates): the LM call runs inside
``dspy.context(send_stream=..., stream_listeners=[listener])``, so DSPy asks LiteLLM for a streamed
completion and sends every chunk to our ``send``, where a
:class:`dspy.streaming.StreamListener` picks the ``answer`` field's text out of the ChatAdapter
format. DSPy hands chunks over with ``anyio.from_thread.run``, which needs the event loop's token in
the calling thread: the worker threads of :class:`~rag_app.server.limits.StageRunner` are not AnyIO
threads, so :meth:`SSEEventSink.lm_stream` sets that token for the duration of the call (the
chunks, and for LiteLLM's legacy path the streamed HTTP call itself, then run on the server's loop).

Deltas are the LM's raw text; grounding runs afterwards and may drop citations or replace the
answer, so the ``done`` event's ``answer`` is authoritative.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy

from rag_app.answering.events import AnswerEvents
from rag_app.core.types import Passage

log = logging.getLogger("rag_app.server.streaming")

#: The queue item that says the program finished (successfully or not).
END = "__end__"
#: The queue item that says the client disconnected: the stream stops, the request's work is dropped.
GONE = "__gone__"


class StreamClosed(Exception):
    """Raised into the LM's chunk stream once nobody reads the SSE stream: the LM call is abandoned."""


class _ListenerStream:
    """What DSPy sees as ``settings.send_stream``: each chunk goes through the listener to ``emit``."""

    def __init__(self, listener: Any, emit: Callable[[str], None], closed: Callable[[], bool]) -> None:
        self.listener = listener
        self.emit = emit
        self.closed = closed

    async def send(self, chunk: Any) -> None:
        if self.closed():  # the client left: stop reading the LM's reply (DSPy/LiteLLM close the stream)
            raise StreamClosed("the SSE client disconnected")
        predict_id = getattr(chunk, "predict_id", None)
        if predict_id is not None and predict_id != id(self.listener.predict):
            return
        try:
            response = self.listener.receive(chunk)
        except Exception as exc:  # a parsing problem must not fail the LM call: done.answer still comes
            log.warning("cannot parse a streamed LM chunk: %s: %s", type(exc).__name__, exc)
            return
        if response is not None and response.chunk:
            self.emit(str(response.chunk))


class SSEEventSink(AnswerEvents):
    """Puts ``("passages", [passage dicts])`` and ``("token", text)`` on ``queue`` (owned by ``loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        import anyio.lowlevel

        self._loop = loop
        self._queue = queue
        self._token = anyio.lowlevel.current_token()  # must be created on the loop's thread
        self.closed = False
        self.passages_sent = False

    def put(self, name: str, data: Any) -> None:
        """Hand an event to the loop (from any thread); dropped once the stream has closed."""
        if self.closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (name, data))

    def close(self) -> None:
        self.closed = True

    def passages(self, passages: Sequence[Passage]) -> None:
        if self.passages_sent:
            return
        self.passages_sent = True
        self.put("passages", [p.model_dump(mode="json") for p in passages])

    def token(self, text: str) -> None:
        if text:
            self.put("token", text)

    @contextlib.contextmanager
    def lm_stream(self, predictor: Any, output_field: str) -> Iterator[None]:
        try:
            from anyio._core._eventloop import threadlocals
            from dspy.streaming import StreamListener

            listener = StreamListener(signature_field_name=output_field, predict=predictor)
        except Exception as exc:  # pragma: no cover - DSPy/AnyIO internals changed: answer in one piece
            log.warning("LM token streaming unavailable (%s: %s)", type(exc).__name__, exc)
            yield
            return
        missing = object()
        previous = getattr(threadlocals, "current_token", missing)
        threadlocals.current_token = self._token
        try:
            stream = _ListenerStream(listener, self.token, lambda: self.closed)
            with dspy.context(send_stream=stream, stream_listeners=[listener]):
                yield
            final = listener.finalize()
            if final is not None and final.chunk:
                self.token(str(final.chunk))
        finally:
            if previous is missing:
                with contextlib.suppress(AttributeError):
                    del threadlocals.current_token
            else:
                threadlocals.current_token = previous
