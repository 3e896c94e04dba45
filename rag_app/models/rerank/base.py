"""What every reranker shares: the :class:`Reranker` protocol, the meaning of its scores, and the
rules both implementations apply to their inputs and outputs.

Scores
    Passages are ranked by the raw logit (``rerank_score``). ``relevance`` is ``sigmoid(logit)``
    computed in float64 (float32 rounds logits above ~17 to exactly 1.0). Scores are NOT comparable
    across models (base, large and v2-m3 have different logit scales), nor calibrated probabilities: use
    them to order one query's candidates, never as a hard threshold ("drop below 0.5").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rag_app.core.errors import InputError
from rag_app.core.types import Passage

#: Every reranker module logs here (tests and log filters rely on the name).
LOGGER_NAME = "rag_app.models.rerank"


class Reranker(Protocol):
    """What pipelines and the server need from a reranker (a cross-encoder, or the fallback)."""

    available: bool
    model_id: str
    backend: str

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]: ...

    def cache_stats(self) -> dict[str, int]: ...

    def describe(self) -> str: ...


def relevance_from_logits(logits: Any) -> np.ndarray:
    """``sigmoid(logit)`` in float64: 0-1, monotone in the logit, never a calibrated probability."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def unavailable_note(reranker: Reranker) -> str | None:
    """The one note every caller shows when passages kept retrieval order; ``None`` when reranked."""
    return None if reranker.available else f"reranker {reranker.describe()}"


def check_top_n(top_n: int | None, n: int) -> int:
    """How many of ``n`` passages to keep: all for ``None``; an :class:`InputError` below 1."""
    if top_n is None:
        return n
    top_n = int(top_n)
    if top_n < 1:
        raise InputError(f"top_n must be at least 1, got {top_n}")
    return min(top_n, n)


def with_retrieval_view(passage: Passage, index: int) -> Passage:
    """Passages that never went through a retriever get their input position as retrieval rank."""
    if passage.retrieval_rank:
        return passage
    return passage.model_copy(update={"retrieval_rank": index + 1, "retrieval_score": passage.score})
