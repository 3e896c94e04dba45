"""Streaming: how a program reports what it has before it returns.

When :data:`answer_events` holds an :class:`AnswerEvents` sink (the server sets one for a streamed chat
request), a program reports its passages as soon as retrieval and reranking are done and runs its LM
call inside the sink's :meth:`AnswerEvents.lm_stream`, which may forward the answer's text deltas. The
deltas are the LM's raw text: grounding still runs afterwards and may drop sentences or replace the
answer, so the program's returned output is authoritative. Without a sink nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

from rag_app.core.types import Passage


class AnswerEvents:
    """A per-request sink for what a program produces before it returns .

    The base class ignores everything; the server's SSE sink overrides the methods. Methods are called
    from the program's worker thread and must not block for long.
    """

    def passages(self, passages: Sequence[Passage]) -> None:
        """The passages the answer will be grounded in, right after retrieval and reranking."""

    @contextlib.contextmanager
    def lm_stream(self, predictor: Any, output_field: str) -> Iterator[None]:
        """Wraps the LM call of ``predictor``; may stream ``output_field``'s text while it runs."""
        yield


#: The sink of the current request, or ``None`` (the default: no streaming, plain ``run``).
answer_events: contextvars.ContextVar[AnswerEvents | None] = contextvars.ContextVar(
    "rag_answer_events", default=None
)
