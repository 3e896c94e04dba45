"""Query rewriting as DSPy modules: multi-query fusion and HyDE, used by the retriever when an LM is set.

Why: a user's words are often not the documents' words ("blindfolded woman with two swords" vs a
card's title and meanings). Both rewrites ask the LM for the documents' vocabulary and retrieve with it
beside the original query, fusing the rankings by reciprocal rank (so the original query's hits are
never lost):

* :class:`MultiQuery`: a few alternative phrasings, each searched like the original.
* :class:`HyDE`: a short hypothetical passage that would answer the query, embedded as a document
  (Gao et al., 2022, "Precise Zero-Shot Dense Retrieval without Relevance Labels"). It is used only to
  find real passages, never shown to anyone.

Whether a site uses one is measured, not assumed: ``rag-app optimize --retrieval-only`` tries them
when an LM is configured and saves the choice in the site's ``retrieval.json``. With no LM configured
the retriever skips rewriting (retrieval works without an LM).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dspy

from rag_app.core.types import Passage

log = logging.getLogger("rag_app.retrieval.query_rewrite")

#: Alternative queries used from one multi-query rewrite (besides the original).
MAX_ALTERNATIVES = 3


class RewriteQueries(dspy.Signature):
    """Write alternative search queries for the same information need, in the words the documents
    themselves would use: synonyms, names of the things described, a more specific and a more general
    phrasing. Do not answer the question."""

    question: str = dspy.InputField(desc="What the user searched for.")
    queries: list[str] = dspy.OutputField(desc="2 or 3 alternative search queries, one per item.")


class HypotheticalPassage(dspy.Signature):
    """Write a short passage (2 to 4 sentences) that would answer the question, in the style of the
    documents being searched. It is used only to find real passages and is never shown."""

    question: str = dspy.InputField(desc="What the user searched for.")
    passage: str = dspy.OutputField(desc="A plausible answering passage.")


class MultiQuery(dspy.Module):
    """The original query plus up to :data:`MAX_ALTERNATIVES` LM-written alternatives."""

    def __init__(self, max_alternatives: int = MAX_ALTERNATIVES) -> None:
        super().__init__()
        self.max_alternatives = max_alternatives
        self.rewrite = dspy.Predict(RewriteQueries)

    def forward(self, question: str) -> dspy.Prediction:
        alternatives = [q.strip() for q in self.rewrite(question=question).queries if q and q.strip()]
        unique = list(dict.fromkeys(q for q in alternatives if q.lower() != question.lower()))
        return dspy.Prediction(queries=[question, *unique[: self.max_alternatives]])


class HyDE(dspy.Module):
    """A hypothetical answering passage for a query (embedded as a document by the retriever)."""

    def __init__(self) -> None:
        super().__init__()
        self.write = dspy.Predict(HypotheticalPassage)

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(passage=self.write(question=question).passage.strip())


def fuse_passage_lists(lists: Sequence[Sequence[Passage]], *, rrf_k: int, k: int) -> list[Passage]:
    """Reciprocal rank fusion of several passage rankings by chunk id; the first list's copy is kept."""
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranking in lists:
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.id] = scores.get(passage.id, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(passage.id, passage)
    order = sorted(scores, key=lambda i: -scores[i])[:k]
    return [
        first[i].model_copy(update={"score": scores[i], "retrieval_score": scores[i], "retrieval_rank": r})
        for r, i in enumerate(order, start=1)
    ]
