"""Dev-split ranking metrics for the fit loops: MRR@5, nDCG@10 and recall@5 at document level.

Why here and not :mod:`rag_app.evaluation.metrics`: the fit modules run on a GPU machine with only
torch and transformers, so this module is stdlib only. The numbers follow the same definitions as the
evaluation package (binary relevance, a document counted once, at its best-ranked chunk), so a dev score
printed by a fit run and one printed by ``rag-app eval`` mean the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["METRICS", "PRIMARY", "better", "doc_order", "mean_metrics", "query_metrics"]

METRICS = ("mrr@5", "ndcg@10", "recall@5")
#: The metric that picks a checkpoint and decides an activation (ties broken by MRR@5).
PRIMARY = "ndcg@10"


def doc_order(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Document ids by descending score, each once (at its best chunk); stable for equal scores."""
    order = sorted(range(len(doc_ids)), key=lambda i: -scores[i])
    seen: dict[str, None] = {}
    for i in order:
        seen.setdefault(doc_ids[i], None)
    return list(seen)


def query_metrics(ranked_docs: Sequence[str], relevant: set[str]) -> dict[str, float]:
    """MRR@5, nDCG@10 (binary gains) and recall@5 of one ranked document list."""
    if not relevant:
        return dict.fromkeys(METRICS, 0.0)
    mrr = next((1.0 / (i + 1) for i, d in enumerate(ranked_docs[:5]) if d in relevant), 0.0)
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked_docs[:10]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    recall = len(set(ranked_docs[:5]) & relevant) / len(relevant)
    return {"mrr@5": mrr, "ndcg@10": dcg / ideal, "recall@5": recall}


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over queries (all 0.0 for no queries)."""
    if not per_query:
        return dict.fromkeys(METRICS, 0.0)
    return {m: sum(q[m] for q in per_query) / len(per_query) for m in METRICS}


def better(new: Mapping[str, float], old: Mapping[str, float] | None, *, margin: float = 0.0) -> bool:
    """Whether ``new`` beats ``old`` on :data:`PRIMARY` by more than ``margin`` (MRR@5 breaks a tie)."""
    if old is None:
        return True
    if new[PRIMARY] - old[PRIMARY] > margin:
        return True
    return new[PRIMARY] == old[PRIMARY] and margin == 0.0 and new["mrr@5"] > old["mrr@5"]
