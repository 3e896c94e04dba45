"""Training pairs with hard negatives mined from the site's own retrieval.

Why the site's own top 20: a reranker only ever re-orders what retrieval hands it, so the negatives
that teach it most are the near misses retrieval ranks high (a minor-arcana chunk sharing a suit word
with a Justice query), not random passages it will never see.

For each labelled query (:mod:`.labelled`):

* **dev** rows are exactly its retrieval candidates (``k`` = 20), in order (``rank``), each labelled by
  its document: what a reranker will be asked to re-order, so the dev score is the pipeline's;
* **train** rows are the positive documents' chunks, read from the store (every chunk of a positive
  document is a positive, up to ``max_positive_chunks`` per query, retrieved chunks first), plus the
  retrieved candidates of other documents as negatives (up to ``negatives_per_query``, highest first).

A candidate is a positive when its document is judged relevant, with the evaluation's own matching
(:func:`rag_app.evaluation.metrics.match_relevant`: ``page#section`` counts as ``page``), so a chunk of a
positive document is never a negative. Queries whose judged documents are not in the store are left
out and counted (a label that names no stored document is a data error to fix, not a negative).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rag_app.core.types import Passage
from rag_app.evaluation.metrics import match_relevant
from rag_app.optimize.training.labelled import LabelledQuery
from rag_app.optimize.training.pairs import PairRow

__all__ = ["MiningReport", "mine_pairs", "store_positives"]

#: ``retrieve(query) -> candidates`` in retrieval order (the site's top ``k``).
Retrieve = Callable[[LabelledQuery], Sequence[Passage]]
#: ``positives(judged doc ids) -> [{"doc_id", "id", "text"}]``: the stored chunks of those documents.
Positives = Callable[[Sequence[str]], Sequence[dict[str, Any]]]


@dataclass
class MiningReport:
    """The mined rows and what was left out."""

    rows: list[PairRow] = field(default_factory=list)
    queries: int = 0
    no_stored_positive: list[str] = field(default_factory=list)
    positives_in_top_k: int = 0

    def counts(self) -> dict[str, int]:
        def count(split: str, label: int) -> int:
            return sum(r.split == split and r.label == label for r in self.rows)

        return {
            "queries": self.queries,
            "train_positive": count("train", 1),
            "train_negative": count("train", 0),
            "dev_positive": count("dev", 1),
            "dev_negative": count("dev", 0),
            "queries_without_stored_positive": len(self.no_stored_positive),
            "queries_with_positive_in_top_k": self.positives_in_top_k,
        }


def _judged(doc_id: str, query: LabelledQuery) -> str | None:
    return match_relevant(doc_id, {d: float(g) for d, g in query.relevant.items()})


def mine_pairs(
    queries: Sequence[LabelledQuery],
    retrieve: Retrieve,
    positives: Positives,
    *,
    negatives_per_query: int = 15,
    max_positive_chunks: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> MiningReport:
    """Training and dev pairs for ``queries``; see the module docstring for what each split holds."""
    report = MiningReport()
    for number, query in enumerate(queries, start=1):
        candidates = list(retrieve(query))
        stored = [c for c in positives(sorted(query.relevant)) if _judged(c["doc_id"], query)]
        if not stored:
            report.no_stored_positive.append(query.qid)
            continue
        report.queries += 1
        labels = [_judged(c.doc_id, query) for c in candidates]
        report.positives_in_top_k += any(labels)
        if query.split == "dev":
            report.rows += [
                PairRow(query.qid, query.query, c.text, int(j is not None), j or c.doc_id, "dev", rank)
                for rank, (c, j) in enumerate(zip(candidates, labels, strict=True), start=1)
            ]
        else:
            report.rows += _train_rows(
                query, candidates, labels, stored, negatives_per_query, max_positive_chunks
            )
        if progress is not None:
            progress(number, len(queries))
    return report


def _train_rows(
    query: LabelledQuery,
    candidates: Sequence[Passage],
    labels: Sequence[str | None],
    stored: Sequence[dict[str, Any]],
    negatives_per_query: int,
    max_positive_chunks: int,
) -> list[PairRow]:
    rank_of = {c.id: rank for rank, c in enumerate(candidates, start=1)}
    retrieved_first = sorted(stored, key=lambda c: (c["id"] not in rank_of, rank_of.get(c["id"], 0)))
    rows = [
        PairRow(
            query.qid,
            query.query,
            c["text"],
            1,
            _judged(c["doc_id"], query) or c["doc_id"],
            "train",
            rank_of.get(c["id"]),
        )
        for c in retrieved_first[:max_positive_chunks]
        if c["text"].strip()
    ]
    negatives = [
        (rank, c) for rank, (c, j) in enumerate(zip(candidates, labels, strict=True), start=1) if j is None
    ]
    rows += [
        PairRow(query.qid, query.query, c.text, 0, c.doc_id, "train", rank)
        for rank, c in negatives[:negatives_per_query]
        if c.text.strip()
    ]
    return rows


def store_positives(store: Any, site: str, collections: Sequence[str]) -> Positives:
    """A :data:`Positives` over ``site``'s tables: chunks whose document is (or is a section of) a
    judged id. Reads each collection's document ids once; texts only for the documents asked for."""
    doc_ids: dict[str, list[str]] = {}
    for collection in collections:
        table = store.open_table(site, collection)
        doc_ids[collection] = sorted(store.doc_hashes(table)) if table is not None else []

    def positives(judged: Sequence[str]) -> list[dict[str, Any]]:
        wanted = set(judged)
        found: list[dict[str, Any]] = []
        for collection, ids in doc_ids.items():
            hits = [d for d in ids if d in wanted or d.split("#", 1)[0] in wanted]
            found += store.chunk_texts(site, collection, hits)
        return found

    return positives
