"""Document-aware ordering of a chunk candidate list: document-level fusion and a per-document cap.

Two failure modes of ranking chunks alone, both measured on card-style probes over the shared tarot
corpus (README, "Document-aware retrieval"): a chunk that shares one salient word with the query beats
the document that matches it as a whole, and a long book split into dozens of chunks crowds the top
20 that the reranker sees. The fixes, each a knob the retrieval-configuration search learns per site:

* ``doc_signals``: rank documents by reciprocal rank fusion of three lists (the chunk ranking, with
  each document at the rank of its best chunk; the document-vector ranking; the document full-text
  ranking, from :mod:`rag_app.store.doc_index`), then hand out chunks in that document order.
* ``max_chunks_per_doc``: at most that many chunks of one document in the top k.

The reranker reorders whatever this hands it, so these knobs matter most for what reaches its window
(the top 20) and for sites that answer from retrieval order.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag_app.core.types import Passage


def fuse_doc_rankings(rankings: Sequence[Sequence[str]], *, rrf_k: int) -> dict[str, float]:
    """``doc_id -> sum over rankings of 1 / (rrf_k + rank)`` (rank-based: no score scales to align)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rrf_k + rank)
    return scores


def chunk_doc_ranking(passages: Sequence[Passage]) -> list[str]:
    """Document ids in the order of their best chunk."""
    return list(dict.fromkeys(p.doc_id for p in passages))


def order_by_documents(
    passages: Sequence[Passage], doc_scores: dict[str, float] | None, *, k: int, max_per_doc: int
) -> list[Passage]:
    """The top ``k`` of ``passages`` with at most ``max_per_doc`` chunks of one document (0 = no cap).

    Without ``doc_scores`` the chunk order is kept and chunks past a document's cap are dropped. With
    them (the fused document scores), documents come in fused order, each with its chunks (best first,
    up to the cap) together, as a parent-document retriever would hand them out. Ranks are rewritten
    so ``retrieval_rank`` is the new position; with ``doc_scores`` a chunk's score is its document's.
    """
    cap = max_per_doc or len(passages)
    if doc_scores is None:
        seen: dict[str, int] = {}
        kept = []
        for passage in passages:
            seen[passage.doc_id] = seen.get(passage.doc_id, 0) + 1
            if seen[passage.doc_id] <= cap:
                kept.append(passage)
        return _renumber(kept[:k], None)
    groups: dict[str, list[Passage]] = {}
    for passage in passages:
        groups.setdefault(passage.doc_id, []).append(passage)
    first = {doc_id: i for i, doc_id in enumerate(groups)}
    docs = sorted(groups, key=lambda d: (-doc_scores.get(d, 0.0), first[d]))
    ordered = [chunk for doc_id in docs for chunk in groups[doc_id][:cap]]
    return _renumber(ordered[:k], doc_scores)


def _renumber(passages: list[Passage], doc_scores: dict[str, float] | None) -> list[Passage]:
    result = []
    for rank, passage in enumerate(passages, start=1):
        score = doc_scores.get(passage.doc_id, 0.0) if doc_scores is not None else passage.score
        result.append(
            passage.model_copy(update={"retrieval_rank": rank, "score": score, "retrieval_score": score})
        )
    return result
