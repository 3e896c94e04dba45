"""The document table beside each chunk table: one row per document, for document-level ranking.

Why: chunk-level search ranks pieces, and two things go wrong with pieces alone. A chunk that shares
one salient word with the query (a suit word in a tarot corpus) outranks the one document that
matches the query as a whole, and a long book split into dozens of chunks fills the candidate pool.
A whole-document view fixes both: each document gets one vector (one of its chunk
vectors: no re-embedding, same vector space, so the embedder guard covers it) and one full-text
entry over all of its text (BM25 then normalises for the document's length), and retrieval fuses
those rankings with the chunk ranking (:mod:`rag_app.retrieval.doc_aware`).

The document vector is its first chunk's vector: what a whole-document embedding with the model's
input limit sees (the opening: a card's description, a page's lead). On the card probes over the
shared tarot corpus, document fusion with it reached nDCG@10 0.553, against 0.535 with the mean of
all chunk vectors (which dilutes the opening with a book's later chapters); README,
"Document-aware retrieval".

The table is derived data: ``<site>__<collection>__docs``, rebuilt for the documents an ingest wrote
(:func:`refresh_doc_table`), wholly rebuilt when missing or built by another embedder. A reader that
finds no document table simply gets no document-level signal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rag_app.store.connection import Database
from rag_app.store.schema import META_DIM, META_MODEL, stored_embedder
from rag_app.store.sql import sql_list
from rag_app.store.upkeep import optimize_table

log = logging.getLogger("rag_app.store.doc_index")

DOC_TABLE_SUFFIX = "__docs"
DOC_FTS_COLUMN = "doc_text"
#: How the document vector was made (a table built another way is rebuilt).
META_DOC_VECTOR = b"rag.doc_vector"
#: Characters of a document kept for its full-text entry (a 50 MB book needs no more to be found).
MAX_DOC_TEXT_CHARS = 200_000
#: Documents read from the chunk table at a time while building (bounds memory on large tables).
BUILD_DOCS_PER_READ = 64
#: Leading chunks of a document read to build its row: enough for :data:`MAX_DOC_TEXT_CHARS` of text,
#: so a 50 MB document's row costs what its first pages do, not the whole document.
MAX_DOC_CHUNKS = 256


def doc_table_name(chunk_table_name: str) -> str:
    return f"{chunk_table_name}{DOC_TABLE_SUFFIX}"


def is_doc_table(name: str) -> bool:
    return name.endswith(DOC_TABLE_SUFFIX)


def doc_schema(dimension: int, model_id: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("title", pa.string()),
            pa.field(DOC_FTS_COLUMN, pa.string()),
            pa.field("n_chunks", pa.int32()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ],
        metadata={
            META_MODEL: model_id.encode(),
            META_DIM: str(dimension).encode(),
            META_DOC_VECTOR: b"first-chunk",
        },
    )


def refresh_doc_table(
    db: Database,
    chunk_table: Any,
    name: str,
    *,
    doc_ids: Iterable[str] | None,
    removed: Iterable[str] = (),
    retention_s: float,
) -> int:
    """Bring ``name``'s document table up to date with ``chunk_table``; returns documents written.

    ``doc_ids``: the documents an ingest (re)wrote; ``None`` rebuilds every document. A missing document
    table, or one built by another embedder, is rebuilt whole. Each call is at most a few commits
    (one per :data:`BUILD_DOCS_PER_READ` documents, plus one delete), and a reader sees a consistent
    table at every version. Versions superseded more than ``retention_s`` ago are removed
    (:func:`rag_app.store.upkeep.optimize_table`).
    """
    model_id, dimension = stored_embedder(chunk_table)
    doc_name = doc_table_name(name)
    existing = _open(db, doc_name)
    if existing is not None and (
        stored_embedder(existing) != (model_id, dimension)
        or (existing.schema.metadata or {}).get(META_DOC_VECTOR) != b"first-chunk"
    ):
        db.drop_table(doc_name)
        existing = None
    if existing is None:
        doc_ids = None
        existing = db.create_table(doc_name, schema=doc_schema(dimension, model_id))
    wanted = _all_doc_ids(chunk_table) if doc_ids is None else sorted(set(doc_ids))
    written = 0
    for start in range(0, len(wanted), BUILD_DOCS_PER_READ):
        batch = wanted[start : start + BUILD_DOCS_PER_READ]
        rows = _doc_rows(chunk_table, batch, existing.schema)
        if rows.num_rows:
            existing.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all().execute(
                rows
            )
            written += rows.num_rows
    gone = sorted(set(removed))
    if gone:
        existing.delete(f"doc_id IN ({sql_list(gone)})")
    if written or gone:
        _refresh_fts(existing, retention_s)
    return written


def search_doc_tables(
    db: Database,
    chunk_table_names: Sequence[str],
    *,
    query_vector: np.ndarray | None,
    model_id: str | None,
    query_text: str,
    depth: int,
) -> tuple[list[str], list[str]] | None:
    """Document ids ranked by document vector and by document full text, over several collections.

    ``None`` when any collection has no usable document table (never built, or built by an embedder
    other than ``model_id``, e.g. before a re-embed caught up): the caller then ranks by chunks alone.
    """
    from rag_app.store.search import fts_query_text

    by_vector: list[tuple[float, str]] = []
    by_text: list[tuple[float, str]] = []
    for name in chunk_table_names:
        table = _open(db, doc_table_name(name))
        if table is None or table.count_rows() == 0:
            return None
        if query_vector is not None:
            if stored_embedder(table) != (model_id, len(query_vector)):
                return None
            rows = (
                table.search(np.asarray(query_vector, dtype=np.float32), vector_column_name="vector")
                .distance_type("cosine")
                .select(["doc_id", "_distance"])
                .limit(depth)
                .to_list()
            )
            by_vector += [(1.0 - float(r["_distance"]), r["doc_id"]) for r in rows]
        try:
            rows = (
                table.search(fts_query_text(query_text), query_type="fts", fts_columns=DOC_FTS_COLUMN)
                .select(["doc_id", "_score"])
                .limit(depth)
                .to_list()
            )
        except ValueError:  # no searchable terms
            rows = []
        by_text += [(float(r["_score"]), r["doc_id"]) for r in rows]
    return [d for _, d in sorted(by_vector, key=lambda x: -x[0])], [
        d for _, d in sorted(by_text, key=lambda x: -x[0])
    ]


# ------------------------------------------------------------------------------------ internals
def _open(db: Database, name: str) -> Any | None:
    return db.get(name)


def _all_doc_ids(chunk_table: Any) -> list[str]:
    rows = chunk_table.count_rows()
    if rows == 0:
        return []
    ids = chunk_table.search().select(["doc_id"]).limit(rows).to_arrow()["doc_id"]
    return sorted(set(ids.to_pylist()))


def _doc_rows(chunk_table: Any, doc_ids: list[str], schema: pa.Schema) -> pa.Table:
    """One row per document of ``doc_ids`` that the chunk table holds (absent ones are skipped).

    Reads each document's first :data:`MAX_DOC_CHUNKS` chunks only (the document vector is the first
    chunk's, the text is cut at :data:`MAX_DOC_TEXT_CHARS`) and the chunk count from the ids alone.
    """
    where = f"doc_id IN ({sql_list(doc_ids)})"
    ids = chunk_table.search().where(where).select(["doc_id"]).limit(max(1, chunk_table.count_rows(where)))
    counts: dict[str, int] = {}
    for doc_id in ids.to_arrow()["doc_id"].to_pylist():
        counts[doc_id] = counts.get(doc_id, 0) + 1
    if not counts:
        return schema.empty_table()
    head = f"{where} AND chunk_index < {MAX_DOC_CHUNKS}"
    chunks = (
        chunk_table.search()
        .where(head)
        .select(["doc_id", "chunk_index", "title", "text", "vector"])
        .limit(max(1, chunk_table.count_rows(head)))
        .to_arrow()
    )
    vectors = np.asarray(chunks["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(
        chunks.num_rows, -1
    )
    groups: dict[str, list[int]] = {}
    for i, doc_id in enumerate(chunks["doc_id"].to_pylist()):
        groups.setdefault(doc_id, []).append(i)
    order = chunks["chunk_index"].to_pylist()
    texts = chunks["text"].to_pylist()
    titles = chunks["title"].to_pylist()
    out_ids, out_titles, out_texts, out_counts, out_vectors = [], [], [], [], []
    for doc_id, rows in groups.items():
        rows.sort(key=lambda i: order[i])
        title = titles[rows[0]] or ""
        body = "\n".join(texts[i] for i in rows)
        out_ids.append(doc_id)
        out_titles.append(title)
        out_texts.append((f"{title}\n{body}" if title else body)[:MAX_DOC_TEXT_CHARS])
        out_counts.append(counts[doc_id])
        out_vectors.append(vectors[rows[0]])
    dim = schema.field("vector").type.list_size
    flat = np.asarray(out_vectors, dtype=np.float32).reshape(-1)
    return pa.Table.from_arrays(
        [
            pa.array(out_ids, pa.string()),
            pa.array(out_titles, pa.string()),
            pa.array(out_texts, pa.string()),
            pa.array(out_counts, pa.int32()),
            pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim),
        ],
        schema=schema,
    )


def _refresh_fts(table: Any, retention_s: float) -> None:
    from lancedb.index import FTS

    existing = {idx.name for idx in table.list_indices()}
    if f"{DOC_FTS_COLUMN}_idx" not in existing:
        table.create_index(DOC_FTS_COLUMN, config=FTS(), replace=True)
    else:
        optimize_table(table, retention_s=retention_s)
