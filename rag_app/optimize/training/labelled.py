"""Labelled queries for fine-tuning: (query, positive document ids), from the three kinds of files a
site has, with a fixed train/dev split.

* an eval-set JSONL (``data/eval/<site>_train.jsonl``): :func:`rag_app.evaluation.datasets.load_eval_jsonl`;
* exported feedback (``rag-app feedback export``): the same row format (``metadata.source ==
  "feedback"``), so the same loader; a row without judged documents (an answer correction only)
  teaches a reranker nothing and is counted, not used;
* a BEIR folder and a qrels split (``--qrels train``): :func:`rag_app.evaluation.datasets.load_beir_queries`.

The dev split is deterministic (:func:`rag_app.optimize.training.pairs.split_of`: sha256 of the query)
unless a separate dev file is given, in which case the train file is all train and the dev file all dev.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError
from rag_app.evaluation.datasets import EvalExample, load_beir_queries, load_eval_jsonl
from rag_app.optimize.training.pairs import split_of

__all__ = ["LabelledQuery", "LabelledSet", "load_labelled", "with_dev"]


@dataclass(frozen=True)
class LabelledQuery:
    """One query with its judged-relevant document ids (grade > 0) and its split."""

    qid: str
    query: str
    relevant: dict[str, int]
    split: str
    collection: str | None = None
    filters: dict[str, Any] | None = None


@dataclass
class LabelledSet:
    """The queries of a training source, and what was left out and why."""

    source: Path
    kind: str  # "eval-jsonl", "feedback", "beir"
    queries: list[LabelledQuery]
    skipped_unjudged: int = 0
    skipped_other_site: int = 0
    notes: list[str] = field(default_factory=list)

    def split_counts(self) -> dict[str, int]:
        return {s: sum(q.split == s for q in self.queries) for s in ("train", "dev")}


def _query(example: EvalExample, index: int, split: str | None, dev_fraction: float) -> LabelledQuery:
    return LabelledQuery(
        qid=example.id or f"row{index + 1}",
        query=example.query,
        relevant=example.relevant,
        split=split or split_of(example.query, dev_fraction),
        collection=example.collection,
        filters=example.filters,
    )


def load_labelled(
    path: str | Path,
    *,
    site: str | None = None,
    qrels: str = "train",
    split: str | None = None,
    dev_fraction: float = 0.2,
) -> LabelledSet:
    """The labelled queries of ``path`` (a JSONL file or a BEIR folder with ``qrels/<qrels>.tsv``).

    ``site`` keeps only rows for that site (rows without a site are kept); ``split`` forces every query
    into one split (a separate dev file), else :func:`split_of` decides per query.
    """
    path = Path(path)
    if path.is_dir():
        examples = load_beir_queries(path, split=qrels)
        kind = "beir"
    elif path.is_file():
        examples = load_eval_jsonl(path)
        kind = "feedback" if all(e.metadata.get("source") == "feedback" for e in examples) else "eval-jsonl"
    else:
        raise InputError(
            f"{path}: training data not found; pass an eval-set JSONL, a `rag-app feedback export` file, "
            "or a BEIR folder (with --qrels SPLIT)"
        )
    result = LabelledSet(path, kind, [])
    for index, example in enumerate(examples):
        if site is not None and example.site not in (None, site):
            result.skipped_other_site += 1
        elif not example.relevant:
            result.skipped_unjudged += 1
        else:
            result.queries.append(_query(example, index, split, dev_fraction))
    if result.skipped_unjudged:
        result.notes.append(
            f"{result.skipped_unjudged} row(s) without judged documents (relevant_ids) left out: "
            "nothing to rank them against"
        )
    if not result.queries:
        raise InputError(
            f"{path}: no labelled queries for site {site!r} ({result.skipped_other_site} for other sites, "
            f"{result.skipped_unjudged} without relevant_ids)"
        )
    return result


def with_dev(train: LabelledSet, dev: LabelledSet | None) -> list[LabelledQuery]:
    """The queries to mine: ``train`` alone (its own split), or ``train`` as all-train plus ``dev``.

    A query text in both files is kept once, as dev, so the dev score never rewards memorised rows.
    """
    if dev is None:
        return list(train.queries)
    dev_texts = {q.query.strip() for q in dev.queries}
    kept = [q for q in train.queries if q.query.strip() not in dev_texts]
    return [*kept, *dev.queries]


def split_summary(queries: Sequence[LabelledQuery]) -> str:
    """``"N train, M dev"`` for messages."""
    train = sum(q.split == "train" for q in queries)
    return f"{train} train, {len(queries) - train} dev"
