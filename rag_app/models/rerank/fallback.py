"""The stand-in reranker for missing weights (``reranker_on_missing="fallback"``): retrieval order kept.

It warns once per process, not once per request, so a service running without weights does not flood
its log; a caller that has already shown the reason itself (the demo's models banner) can
:meth:`~FallbackReranker.acknowledge` it and skip even that one warning.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from rag_app.core.errors import ModelNotAvailableError
from rag_app.core.types import Passage
from rag_app.models.rerank.base import LOGGER_NAME, check_top_n, with_retrieval_view

logger = logging.getLogger(LOGGER_NAME)


def retrieval_order(passages: Sequence[Passage], top_n: int | None) -> list[Passage]:
    """The first ``top_n`` passages as they came, marked ``reranked=False``: what every reranker returns
    when it cannot score (missing weights, or a remote server that is down)."""
    passages = list(passages)
    top_n = check_top_n(top_n, len(passages))
    return [
        with_retrieval_view(p, i).model_copy(update={"reranked": False})
        for i, p in enumerate(passages[:top_n])
    ]


#: Whether this process has warned (or been told not to) about a missing reranker; guarded by the lock.
_fallback_warned = False
_fallback_warned_lock = threading.Lock()


class FallbackReranker:
    """Stands in when the weights are missing and ``reranker_on_missing="fallback"``.

    Keeps the retrieval (hybrid) order, marks every passage ``reranked=False`` and logs one warning per
    process (logger ``rag_app.models.rerank``) the first time it is used. :meth:`score` raises, since
    there is no model to score with.
    """

    available = False
    backend = "none"

    def __init__(self, reason: str, model: str = "", revision: str | None = None) -> None:
        self.reason = reason
        self.model_id = model
        self.revision = revision

    def acknowledge(self) -> None:
        """The caller has already shown the user why (the demo's models banner): skip the log warning."""
        global _fallback_warned
        with _fallback_warned_lock:
            _fallback_warned = True

    def _warn_once(self) -> None:
        global _fallback_warned
        with _fallback_warned_lock:
            if _fallback_warned:
                return
            _fallback_warned = True
        logger.warning("reranker unavailable, passages keep their retrieval order: %s", self.reason)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        raise ModelNotAvailableError(self.reason)

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        kept = retrieval_order(passages, top_n)  # a bad top_n raises before the warning
        self._warn_once()
        return kept

    def cache_stats(self) -> dict[str, int]:
        return {"hits": 0, "misses": 0, "size": 0, "maxsize": 0, "pairs_scored": 0, "batches": 0}

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        return f"unavailable ({self.model_id}{rev}), keeping retrieval order: {self.reason}"

    def __repr__(self) -> str:
        return f"FallbackReranker({self.describe()})"
