"""Queries over chunk tables: vector (cosine), full-text (BM25) and hybrid, merged across collections.

Hybrid search fuses the vector and full-text rankings by reciprocal rank fusion (:func:`rrf_fuse`):
rank-based, so BM25 scores and cosine similarities never have to be put on one scale. Several
collections are searched table by table and their hits merged by score (one table per collection:
see :mod:`rag_app.store.vector_store`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_app.core.errors import InputError
from rag_app.core.settings import SearchMode
from rag_app.core.types import Passage, SearchFilters
from rag_app.store.schema import FTS_COLUMN, HEADER_COLUMN, OFFSET_COLUMNS, check_embedder
from rag_app.store.sql import filter_sql

log = logging.getLogger("rag_app.store.search")

#: Columns read back for a search result (never the vector: it is large and nobody downstream needs it).
RESULT_COLUMNS = [
    "id",
    "doc_id",
    "site",
    "collection",
    "chunk_index",
    "title",
    "text",
    "source",
    "heading_path",
    "date",
    "tickers",
    "tags",
    "metadata_json",
    *OFFSET_COLUMNS,
]


def search_tables(
    tables: Sequence[tuple[str, Any]],
    *,
    mode: SearchMode,
    k: int,
    query_text: str,
    query_vector: np.ndarray | None,
    model_id: str | None,
    filters: SearchFilters | None,
    ann_ef: int,
    rrf_k: int,
    title_boost: float = 0.0,
) -> list[Passage]:
    """Top ``k`` chunks over ``(name, table)`` pairs by vector, full-text or hybrid (RRF) search.

    ``title_boost`` > 0 adds a match on the chunk's header (title > headings) with that weight to the
    full-text score, where the table has the header column (schema 2)."""
    where = filter_sql(filters)
    depth = k if mode != "hybrid" else max(2 * k, 50)
    vector_lists: list[list[dict[str, Any]]] = []
    text_lists: list[list[dict[str, Any]]] = []
    for name, table in tables:
        if table.count_rows() == 0:
            continue
        if mode in ("vector", "hybrid"):
            if query_vector is None or model_id is None:
                raise InputError(f"{mode} search needs a query vector")
            check_embedder(table, model_id, len(query_vector), where=name)
            vector_lists.append(vector_query(table, query_vector, depth, where, ann_ef=ann_ef))
        if mode in ("fts", "hybrid"):
            text_lists.append(fts_query(table, query_text, depth, where, title_boost=title_boost))
    vector_hits = _merge_by_score(vector_lists)
    text_hits = _merge_by_score(text_lists)
    if mode == "vector":
        ranked = vector_hits
    elif mode == "fts":
        ranked = text_hits
    else:
        ranked = rrf_fuse([vector_hits, text_hits], rrf_k=rrf_k)
    return [_to_passage(row, rank) for rank, row in enumerate(ranked[:k], start=1)]


def vector_query(
    table: Any, vector: np.ndarray, k: int, where: str | None, *, ann_ef: int
) -> list[dict[str, Any]]:
    query = table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
    query = query.distance_type("cosine").select([*result_columns(table), "_distance"]).limit(k)
    query = query.ef(max(ann_ef, k))  # LanceDB's default (1.5 x k) loses recall
    if where:
        query = query.where(where, prefilter=True)
    rows = query.to_list()
    for row in rows:
        row["_score"] = 1.0 - float(row.pop("_distance"))
    return rows


def fts_query(
    table: Any, text: str, k: int, where: str | None, *, title_boost: float = 0.0
) -> list[dict[str, Any]]:
    cleaned = fts_query_text(text)
    if title_boost > 0 and HEADER_COLUMN in table.schema.names:
        from lancedb.query import MultiMatchQuery

        match = MultiMatchQuery(cleaned, [FTS_COLUMN, HEADER_COLUMN], boosts=[1.0, title_boost])
        query = table.search(match, query_type="fts")
    else:
        query = table.search(cleaned, query_type="fts", fts_columns=FTS_COLUMN)
    query = query.select([*result_columns(table), "_score"]).limit(k)
    if where:
        query = query.where(where, prefilter=True)
    try:
        return query.to_list()
    except ValueError as exc:  # a query with no searchable terms, e.g. only stop words
        log.info("full-text search returned nothing for %r: %s", text[:80], exc)
        return []


def result_columns(table: Any) -> list[str]:
    """:data:`RESULT_COLUMNS` that ``table`` has: a table written by schema 1 has no offset columns
    (its passages then carry null offsets instead of the query failing)."""
    names = set(table.schema.names)
    return [c for c in RESULT_COLUMNS if c in names]


def fts_query_text(text: str) -> str:
    """Strip query-syntax characters so user text is always a plain bag-of-words match query."""
    cleaned = "".join(ch if ch.isalnum() or ch.isspace() or ch in "-_'." else " " for ch in text)
    return " ".join(cleaned.split()) or text


def _merge_by_score(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    if len(lists) == 1:
        return lists[0]
    merged = [row for rows in lists for row in rows]
    return sorted(merged, key=lambda r: -float(r["_score"]))


def rrf_fuse(lists: Sequence[Sequence[dict[str, Any]]], *, rrf_k: int = 60) -> list[dict[str, Any]]:
    """Reciprocal rank fusion: score = sum over lists of 1 / (rrf_k + rank). Ties keep first-seen order.

    Rank-based, so BM25 scores and cosine similarities never have to be put on one scale.
    """
    scores: dict[str, float] = {}
    rows: dict[str, dict[str, Any]] = {}
    for ranked in lists:
        for rank, row in enumerate(ranked, start=1):
            scores[row["id"]] = scores.get(row["id"], 0.0) + 1.0 / (rrf_k + rank)
            rows.setdefault(row["id"], row)
    order = sorted(scores, key=lambda i: -scores[i])
    return [{**rows[i], "_score": scores[i]} for i in order]


def _to_passage(row: dict[str, Any], rank: int) -> Passage:
    metadata = json.loads(row.get("metadata_json") or "{}")
    date = row.get("date")
    metadata.update(
        {
            "date": date.isoformat() if isinstance(date, dt.date) else date,
            "tickers": list(row.get("tickers") or []),
            "tags": list(row.get("tags") or []),
            "chunk_index": row.get("chunk_index"),
        }
    )
    score = float(row["_score"])
    return Passage(
        id=row["id"],
        doc_id=row["doc_id"],
        text=row["text"],
        title=row.get("title") or "",
        score=score,
        site=row.get("site") or "",
        collection=row.get("collection") or "",
        source=row.get("source") or "",
        heading_path=list(row.get("heading_path") or []),
        metadata=metadata,
        retrieval_rank=rank,
        retrieval_score=score,
        **{name: row.get(name) for name in OFFSET_COLUMNS},
    )
