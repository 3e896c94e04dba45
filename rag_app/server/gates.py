"""Per-stage concurrency gates around the models, as explicit wrappers of their protocols.

The server limits how many embed, rerank and LM calls run at once (each stage has its own gate with a
bounded queue; a full queue answers 503). The gate must sit exactly where a stage runs, also inside
program runs, so the runtime is given these wrappers (:class:`rag_app.runtime.StageWrappers`) and
builds every pipeline and program on them. Each wrapper implements its protocol method by method:
nothing is patched, no class is made at run time, and a method the protocol does not name is not
reachable through the wrapper.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_app.answering.traced_lm import DelegatingLM
from rag_app.core.types import Passage
from rag_app.models.embeddings.base import Embedder
from rag_app.models.rerank.base import Reranker
from rag_app.runtime import StageWrappers
from rag_app.server.limits import DeadlineExceeded, Overloaded, StageGate


@dataclass
class RequestScope:
    """Per-request data visible to the worker threads of the request (through a context variable)."""

    deadline: float | None = None  # time.monotonic() value
    deadline_s: float = 0.0
    overloaded: list[Overloaded] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    #: Set when the client is gone (an SSE stream it left): its threads start no further stage, so work
    #: queued behind other requests (an LM call above all) is dropped instead of run for nobody.
    gone: threading.Event = field(default_factory=threading.Event)


request_scope_var: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "rag_request_scope", default=None
)


@contextlib.contextmanager
def in_stage(gate: StageGate) -> Iterator[None]:
    """Hold ``gate`` in a worker thread, waiting at most until the request's deadline, and not at all
    once the request's client is gone (:class:`~rag_app.server.limits.ClientGone`)."""
    scope = request_scope_var.get()
    timeout = None if scope is None or scope.deadline is None else max(0.0, scope.deadline - time.monotonic())
    try:
        gate.acquire_blocking(timeout, None if scope is None else scope.gone)
    except Overloaded as exc:
        if scope is not None:
            scope.overloaded.append(exc)
        raise
    except TimeoutError:
        raise DeadlineExceeded(scope.deadline_s if scope else 0.0, gate.name) from None
    start = time.perf_counter()
    try:
        yield
    finally:
        held = time.perf_counter() - start
        gate.record_hold(held)
        gate.release()
        if scope is not None:
            key = f"{gate.name}_ms"
            scope.stage_ms[key] = scope.stage_ms.get(key, 0.0) + held * 1000


class GatedEmbedder:
    """An :class:`~rag_app.models.embeddings.base.Embedder` whose embed calls hold the ``embed`` gate."""

    def __init__(self, inner: Embedder, gate: StageGate) -> None:
        self.inner = inner
        self.gate = gate
        self.model_id = inner.model_id
        self.max_tokens = inner.max_tokens

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_query(self, text: str) -> np.ndarray:
        with in_stage(self.gate):
            return self.inner.embed_query(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        with in_stage(self.gate):
            return self.inner.embed_documents(texts)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)


class GatedReranker:
    """A :class:`~rag_app.models.rerank.base.Reranker` whose scoring calls hold the ``rerank`` gate."""

    def __init__(self, inner: Reranker, gate: StageGate) -> None:
        self.inner = inner
        self.gate = gate
        self.model_id = inner.model_id
        self.backend = inner.backend

    @property
    def available(self) -> bool:
        """The wrapped reranker's, read on every call: a remote one goes down and comes back."""
        return self.inner.available

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        with in_stage(self.gate):
            return self.inner.score(query, passages)

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        with in_stage(self.gate):
            return self.inner.rerank(query, passages, top_n)

    def cache_stats(self) -> dict[str, int]:
        return self.inner.cache_stats()

    def describe(self) -> str:
        return self.inner.describe()


class GatedLM(DelegatingLM):
    """A DSPy LM whose calls hold the ``lm`` gate; everything else is the wrapped LM's (whole calls
    delegated, as :class:`~rag_app.answering.traced_lm.DelegatingLM` says)."""

    def __init__(self, inner: Any, gate: StageGate) -> None:
        super().__init__(inner)
        self.gate = gate

    def around(self) -> AbstractContextManager[None]:
        return in_stage(self.gate)


def stage_wrappers(gates: dict[str, StageGate]) -> StageWrappers:
    """The wrappers that put ``gates`` around each model the runtime builds."""
    return StageWrappers(
        embedder=lambda embedder: GatedEmbedder(embedder, gates["embed"]),
        reranker=lambda reranker: GatedReranker(reranker, gates["rerank"]),
        lm=lambda lm: GatedLM(lm, gates["lm"]),
    )
