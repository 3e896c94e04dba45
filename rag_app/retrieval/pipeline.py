"""Retrieve-then-rerank: the pipeline every site program composes.

The retriever returns the top ``k`` (20) candidates; the reranker scores every (query, candidate)
pair and the pipeline keeps the best ``top_n`` (5). The rerank window is always the whole candidate
pool, never an already-cut top 5: a passage retrieval ranked 20th can come first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dspy

from rag_app.core.settings import Settings
from rag_app.core.tracing import stage_span
from rag_app.core.types import Passage
from rag_app.models.rerank import Reranker


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


class RetrieveThenRerank(dspy.Module):
    """Retrieve ``k`` candidates, rerank all of them, keep the best ``top_n``.

    ``forward(query, k=None, top_n=None, filters=None, mode=None, **retriever_kwargs)`` returns
    ``dspy.Prediction(passages=best top_n, candidates=all k in retrieval order, reranked=bool,
    timings={...ms}, mode=...)``. ``k`` defaults to the retriever's ``default_k`` (its tuned per-site
    value) or ``settings.retrieve_k`` (20); ``top_n`` to ``settings.rerank_top_n`` (5). ``timings`` holds
    the retriever's own entries (``embed_ms``, ``search_ms``) plus ``retrieve_ms``, ``rerank_ms`` and
    ``total_ms``. ``reranked`` is False when the reranker is a :class:`FallbackReranker`.
    """

    def __init__(self, retriever: Any, reranker: Reranker, settings: Settings | None = None) -> None:
        super().__init__()
        self.retriever = retriever
        self.reranker = reranker
        self.settings = settings or Settings.model_construct()  # defaults, no env or file

    def _k_and_top_n(self, k: int | None, top_n: int | None) -> tuple[int, int]:
        if k is None:
            k = getattr(self.retriever, "default_k", None) or self.settings.retrieve_k
        return int(k), int(top_n if top_n is not None else self.settings.rerank_top_n)

    def _use_reranker(self, rerank: bool | None) -> bool:
        """``rerank`` as asked, else the site's saved choice (``retrieval.json``), else True."""
        return bool(getattr(self.retriever, "default_rerank", True) if rerank is None else rerank)

    def _rerank(self, query: str, passages: Sequence[Passage], top_n: int, rerank: bool) -> list[Passage]:
        if not rerank:
            return list(passages[:top_n])
        reranker = self.reranker
        attributes = {
            "rag.rerank.candidates": len(passages),
            "rag.rerank.top_n": top_n,
            "rag.rerank.model": str(reranker.model_id),
            "rag.rerank.backend": str(reranker.backend),
            "rag.rerank.available": bool(reranker.available),  # False: a fallback kept retrieval order
        }
        with stage_span("rerank", attributes):
            return reranker.rerank(query, passages, top_n=top_n)

    def _prediction(
        self, query_pred: Any, best: list[Passage], t0: float, t1: float, mode: Any, rerank: bool
    ) -> Any:
        timings = dict(getattr(query_pred, "timings", None) or {})
        timings["retrieve_ms"] = (t1 - t0) * 1000.0
        timings["rerank_ms"] = _ms(t1)
        timings["total_ms"] = _ms(t0)
        return dspy.Prediction(
            passages=best,
            candidates=list(query_pred.passages),
            # The passages say whether this call was reranked (a remote reranker can fall back per call).
            reranked=rerank and self.reranker.available and all(p.reranked for p in best),
            timings=timings,
            mode=getattr(query_pred, "mode", None) or mode,
        )

    def forward(
        self,
        query: str,
        k: int | None = None,
        top_n: int | None = None,
        filters: Any = None,
        mode: str | None = None,
        rerank: bool | None = None,
        **retriever_kwargs: Any,
    ) -> dspy.Prediction:
        k, top_n = self._k_and_top_n(k, top_n)
        rerank = self._use_reranker(rerank)
        t0 = time.perf_counter()
        pred = self.retriever(query=query, k=k, filters=filters, mode=mode, **retriever_kwargs)
        t1 = time.perf_counter()
        best = self._rerank(query, pred.passages, top_n, rerank)
        return self._prediction(pred, best, t0, t1, mode, rerank)
