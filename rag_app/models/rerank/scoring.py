"""What every scoring reranker does around its model: answer repeated pairs from the score cache, score
each distinct text once, and turn logits into the ranked passages the :class:`Reranker` protocol
returns. Shared by the in-process cross-encoder and the remote reranker, so both rank, tie-break and
fill passages the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from rag_app.core.types import Passage
from rag_app.models.rerank.base import relevance_from_logits, with_retrieval_view
from rag_app.models.rerank.cache import ScoreCache


def text_digest(text: str) -> str:
    """The passage part of a score-cache key (a digest: keys stay small whatever the passage length)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def cached_scores(
    texts: Sequence[str],
    cache: ScoreCache,
    key: Callable[[str], Hashable],
    predict: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """Logits (float64, input order) of ``texts``: cache hits as they are, each other distinct text
    scored once by ``predict`` (which gets them in first-seen order) and cached."""
    texts = list(texts)
    out = np.empty(len(texts), dtype=np.float64)
    positions: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        positions.setdefault(text, []).append(i)
    todo: list[tuple[str, Hashable]] = []
    for text, where in positions.items():
        text_key = key(text)
        hit = cache.get(text_key) if cache.maxsize else None
        if hit is None:
            todo.append((text, text_key))
        else:
            out[where] = hit
    if todo:
        logits = np.asarray(predict([text for text, _ in todo]), dtype=np.float64)
        for (text, text_key), value in zip(todo, logits.tolist(), strict=True):
            out[positions[text]] = value
            cache.put(text_key, value)
    return out


def ranked_passages(passages: Sequence[Passage], logits: np.ndarray, top_n: int) -> list[Passage]:
    """The best ``top_n`` of ``passages`` by logit (ties keep input order), as reranked copies:
    ``score`` = ``rerank_score`` = the logit, ``relevance`` = float64 sigmoid, ``reranked=True``, and
    the retrieval rank/score (filled from the input order when the caller left them unset)."""
    relevance = relevance_from_logits(logits)
    order = sorted(range(len(passages)), key=lambda i: (-logits[i], i))[:top_n]
    return [
        with_retrieval_view(passages[i], i).model_copy(
            update={
                "score": float(logits[i]),
                "rerank_score": float(logits[i]),
                "relevance": float(relevance[i]),
                "reranked": True,
            }
        )
        for i in order
    ]
