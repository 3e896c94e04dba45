"""LanceDB on disk: one table per (site, collection), search with prefilters, and indexes.

Why one table per collection rather than one big table with site/collection columns: collections of
one site are searched separately (the resources index, ticker pages, catalyst notes), re-ingest and
``--prune`` work per collection, each table records the embedder that built it, and the ANN index
threshold applies to each corpus on its own size. Searching several collections merges per-table
results (see :func:`rrf_fuse`).

Every write is one LanceDB commit (a new table version): ``merge_insert`` replaces a batch of
documents' chunks atomically, so a crash between batches leaves each document either wholly old or
wholly new, and the table always readable. Writers of one collection take its writer lock
(:mod:`rag_app.store.locks`, :meth:`VectorStore.writer`) around their read-compare-write, so two writers
never both insert the same chunk ids; :meth:`VectorStore.duplicate_ids` and :meth:`VectorStore.dedupe`
detect and repair tables written before that (or by a writer on another host).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rag_app.core.errors import EmbedderMismatchError, InputError
from rag_app.core.settings import SearchMode, Settings
from rag_app.core.types import Chunk, Passage, SearchFilters
from rag_app.store.locks import writer_locks

log = logging.getLogger("rag_app.store.vector_store")

SCHEMA_VERSION = "1"
META_MODEL = b"rag.embedder_model"
META_DIM = b"rag.dimension"
META_SCHEMA = b"rag.schema_version"
FTS_COLUMN = "search_text"
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
]


def table_name(site: str, collection: str) -> str:
    return f"{site}__{collection}"


def chunk_schema(dimension: int, model_id: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("doc_hash", pa.string()),
            pa.field("site", pa.string()),
            pa.field("collection", pa.string()),
            pa.field("chunk_index", pa.int32()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field(FTS_COLUMN, pa.string()),
            pa.field("source", pa.string()),
            pa.field("heading_path", pa.list_(pa.string())),
            pa.field("date", pa.date32()),
            pa.field("tickers", pa.list_(pa.string())),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("metadata_json", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ],
        metadata={
            META_MODEL: model_id.encode(),
            META_DIM: str(dimension).encode(),
            META_SCHEMA: SCHEMA_VERSION.encode(),
        },
    )


def chunks_to_table(
    chunks: Sequence[Chunk], search_texts: Sequence[str], vectors: np.ndarray, schema: pa.Schema
) -> pa.Table:
    """Arrow rows for a batch of chunks, in the table's schema (so types never drift)."""
    return pa.Table.from_pylist(
        [
            {
                "id": c.id,
                "doc_id": c.doc_id,
                "doc_hash": c.doc_hash,
                "site": c.site,
                "collection": c.collection,
                "chunk_index": c.chunk_index,
                "title": c.title,
                "text": c.text,
                FTS_COLUMN: st,
                "source": c.source,
                "heading_path": c.heading_path,
                "date": c.date,
                "tickers": c.tickers,
                "tags": c.tags,
                "metadata_json": json.dumps(c.metadata, default=str, sort_keys=True),
                "vector": v.astype(np.float32).tolist(),
            }
            for c, st, v in zip(chunks, search_texts, vectors, strict=True)
        ],
        schema=schema,
    )


@dataclass(frozen=True)
class TableInfo:
    site: str
    collection: str
    rows: int
    documents: int
    embedder_model: str
    dimension: int
    version: int
    indices: list[str]
    #: Chunk ids stored more than once, and the rows beyond the first of each (0 in a healthy table).
    duplicate_ids: int = 0
    duplicate_rows: int = 0


class VectorStore:
    """The LanceDB database under ``settings.db_dir``."""

    def __init__(self, settings: Settings) -> None:
        import lancedb

        self.settings = settings
        settings.db_dir.mkdir(parents=True, exist_ok=True)
        self.db = lancedb.connect(str(settings.db_dir))
        self.locks = writer_locks(settings)

    def writer(self, site: str, collection: str) -> AbstractContextManager[None]:
        """Exclusive write access to one collection: hold it around any read-compare-write."""
        return self.locks.hold(site, collection)

    # ------------------------------------------------------------------------------ tables
    def check_site(self, site: str, collection: str | None = None) -> list[str]:
        """The collections to use for ``site`` (all, or the one named): :meth:`Settings.collections_for`."""
        return self.settings.collections_for(site, collection)

    def document_metadata(self, site: str, collection: str) -> dict[str, dict[str, Any]]:
        """``doc_id -> metadata`` (the document's own fields) for every document of a collection."""
        table = self.open_table(site, collection)
        if table is None:
            return {}
        rows = read_columns(table, ["doc_id", "metadata_json"]).to_pylist()
        return {row["doc_id"]: json.loads(row["metadata_json"] or "{}") for row in rows}

    def table_names(self) -> list[str]:
        result = self.db.list_tables()
        names = getattr(result, "tables", result)
        return sorted(names)

    def open_table(self, site: str, collection: str) -> Any | None:
        name = table_name(site, collection)
        return self.db.open_table(name) if name in self.table_names() else None

    def create_or_open(self, site: str, collection: str, model_id: str, dimension: int) -> Any:
        table = self.open_table(site, collection)
        if table is None:
            table = self.db.create_table(
                table_name(site, collection), schema=chunk_schema(dimension, model_id)
            )
        check_embedder(table, model_id, dimension, where=table_name(site, collection))
        return table

    def doc_hashes(self, table: Any) -> dict[str, str]:
        """doc_id -> doc_hash of what the table holds now."""
        data = read_columns(table, ["doc_id", "doc_hash"])
        return dict(zip(data["doc_id"].to_pylist(), data["doc_hash"].to_pylist(), strict=True))

    def replace_documents(self, table: Any, rows: pa.Table, doc_ids: Iterable[str]) -> None:
        """Atomically make ``rows`` the only chunks of ``doc_ids`` (one commit)."""
        ids = sorted(set(doc_ids))
        if not ids:
            return
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"doc_id IN ({_sql_list(ids)})")
            .execute(rows)
        )

    def delete_documents(self, table: Any, doc_ids: Iterable[str]) -> None:
        ids = sorted(set(doc_ids))
        if ids:
            table.delete(f"doc_id IN ({_sql_list(ids)})")

    def refresh_indexes(self, table: Any, *, changed: bool = True) -> list[str]:
        """Full-text index always; the ANN index once the table passes ``ann_threshold_rows``.

        Below the threshold a flat scan is both exact and fast enough (see README benchmarks).
        ``changed=False`` (nothing was written) only creates indexes that are missing: ``optimize``
        compacts and re-indexes, which commits new table versions even when no row changed.
        Returns the names of indexes created or updated.
        """
        from lancedb.index import FTS

        rows = table.count_rows()
        existing = {idx.name: idx for idx in table.list_indices()}
        touched: list[str] = []
        if rows == 0:
            return touched
        if f"{FTS_COLUMN}_idx" not in existing:
            table.create_index(FTS_COLUMN, config=FTS(), replace=True)
            touched.append(f"{FTS_COLUMN}_idx")
        has_vector_index = "vector_idx" in existing
        if not has_vector_index and rows >= self.settings.ann_threshold_rows:
            table.create_index("vector", config=ann_index_config(self.settings.ann_index_type), replace=True)
            touched.append("vector_idx")
        if existing and changed:
            table.optimize()  # folds newly written rows into the indexes that already existed
        return touched

    def info(self, site: str, collection: str) -> TableInfo | None:
        table = self.open_table(site, collection)
        if table is None:
            return None
        meta = table.schema.metadata or {}
        docs = read_columns(table, ["doc_id"])["doc_id"]
        dups = self.duplicate_ids(table)
        return TableInfo(
            site,
            collection,
            table.count_rows(),
            len(set(docs.to_pylist())),
            meta.get(META_MODEL, b"?").decode(),
            int(meta.get(META_DIM, b"0")),
            table.version,
            [f"{i.name} ({i.index_type})" for i in table.list_indices()],
            len(dups),
            sum(dups.values()),
        )

    # ------------------------------------------------------------------------------ integrity
    def duplicate_ids(self, table: Any) -> dict[str, int]:
        """chunk id -> extra rows beyond the first, for ids stored more than once (empty if healthy)."""
        ids = read_columns(table, ["id"])
        if ids.num_rows == 0:
            return {}
        counts = ids.group_by("id").aggregate([("id", "count")])
        pairs = zip(counts["id"].to_pylist(), counts["id_count"].to_pylist(), strict=True)
        return {i: n - 1 for i, n in pairs if n > 1}

    def dedupe(self, site: str, collection: str) -> int:
        """Delete every row of a repeated chunk id but the first, in one commit; returns rows removed.

        Runs under the writer lock. Rows are addressed by ``_rowid``, so the kept row of each id is
        never touched and a crash leaves the table as it was (a delete is one atomic commit).
        """
        with self.writer(site, collection):
            table = self.open_table(site, collection)
            if table is None:
                return 0
            dups = self.duplicate_ids(table)
            if not dups:
                return 0
            rows = (
                table.search()
                .with_row_id(True)
                .select(["id"])
                .where(f"id IN ({_sql_list(sorted(dups))})")
                .limit(sum(dups.values()) + len(dups))
                .to_arrow()
                .to_pylist()
            )
            seen: set[str] = set()
            extra: list[int] = []
            for row in sorted(rows, key=lambda r: r["_rowid"]):
                if row["id"] in seen:
                    extra.append(int(row["_rowid"]))
                seen.add(row["id"])
            table.delete(f"_rowid IN ({', '.join(map(str, extra))})")
            self.refresh_indexes(table)
            log.info("%s: removed %d duplicate rows", table_name(site, collection), len(extra))
            return len(extra)

    # ------------------------------------------------------------------------------ search
    def search(
        self,
        site: str,
        collections: Sequence[str],
        *,
        mode: SearchMode,
        k: int,
        query_text: str,
        query_vector: np.ndarray | None,
        model_id: str | None,
        filters: SearchFilters | None = None,
    ) -> list[Passage]:
        """Top ``k`` chunks of ``site`` over ``collections`` by vector, full-text or hybrid (RRF) search."""
        where = filter_sql(filters)
        depth = k if mode != "hybrid" else max(2 * k, 50)
        vector_lists: list[list[dict[str, Any]]] = []
        text_lists: list[list[dict[str, Any]]] = []
        for collection in collections:
            table = self.open_table(site, collection)
            if table is None or table.count_rows() == 0:
                continue
            if mode in ("vector", "hybrid"):
                if query_vector is None or model_id is None:
                    raise InputError(f"{mode} search needs a query vector")
                meta = table.schema.metadata or {}
                check_embedder(
                    table,
                    model_id,
                    len(query_vector),
                    where=table_name(site, collection),
                    stored=(meta.get(META_MODEL, b"").decode(), int(meta.get(META_DIM, b"0"))),
                )
                vector_lists.append(self._vector(table, query_vector, depth, where))
            if mode in ("fts", "hybrid"):
                text_lists.append(self._fts(table, query_text, depth, where))
        vector_hits = _merge_by_score(vector_lists)
        text_hits = _merge_by_score(text_lists)
        if mode == "vector":
            ranked = vector_hits
        elif mode == "fts":
            ranked = text_hits
        else:
            ranked = rrf_fuse([vector_hits, text_hits], rrf_k=self.settings.rrf_k)
        return [_to_passage(row, rank) for rank, row in enumerate(ranked[:k], start=1)]

    def _vector(self, table: Any, vector: np.ndarray, k: int, where: str | None) -> list[dict[str, Any]]:
        query = table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
        query = query.distance_type("cosine").select([*RESULT_COLUMNS, "_distance"]).limit(k)
        query = query.ef(max(self.settings.ann_ef, k))  # LanceDB's default (1.5 x k) loses recall
        if where:
            query = query.where(where, prefilter=True)
        rows = query.to_list()
        for row in rows:
            row["_score"] = 1.0 - float(row.pop("_distance"))
        return rows

    def _fts(self, table: Any, text: str, k: int, where: str | None) -> list[dict[str, Any]]:
        query = table.search(fts_query_text(text), query_type="fts", fts_columns=FTS_COLUMN)
        query = query.select([*RESULT_COLUMNS, "_score"]).limit(k)
        if where:
            query = query.where(where, prefilter=True)
        try:
            return query.to_list()
        except ValueError as exc:  # a query with no searchable terms, e.g. only stop words
            log.info("full-text search returned nothing for %r: %s", text[:80], exc)
            return []


# ---------------------------------------------------------------------------------------- helpers


def check_embedder(
    table: Any, model_id: str, dimension: int, *, where: str, stored: tuple[str, int] | None = None
) -> None:
    """Refuse to mix vector spaces: the table's recorded embedder must be the one in use."""
    if stored is None:
        meta = table.schema.metadata or {}
        stored = (meta.get(META_MODEL, b"").decode(), int(meta.get(META_DIM, b"0")))
    stored_model, stored_dim = stored
    if stored_model != model_id or stored_dim != dimension:
        raise EmbedderMismatchError(
            f"table {where} was built with embedder {stored_model!r} ({stored_dim}-d) but the current "
            f"settings use {model_id!r} ({dimension}-d); set RAG_EMBEDDER_MODEL/RAG_EMBEDDER_BACKEND back, "
            f"or re-index into a fresh data dir (RAG_DATA_DIR)"
        )


def ann_index_config(index_type: str) -> Any:
    """LanceDB index config for ``settings.ann_index_type``, always with cosine distance."""
    from lancedb.index import HnswSq, IvfPq

    return HnswSq(distance_type="cosine") if index_type == "IVF_HNSW_SQ" else IvfPq(distance_type="cosine")


def read_columns(table: Any, columns: list[str]) -> pa.Table:
    """All rows of some columns, without reading the (large) vector column."""
    rows = table.count_rows()
    if rows == 0:
        return pa.table({c: pa.array([], type=table.schema.field(c).type) for c in columns})
    return table.search().select(columns).limit(rows).to_arrow()


def fts_query_text(text: str) -> str:
    """Strip query-syntax characters so user text is always a plain bag-of-words match query."""
    cleaned = "".join(ch if ch.isalnum() or ch.isspace() or ch in "-_'." else " " for ch in text)
    return " ".join(cleaned.split()) or text


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(_sql_str(v) for v in values)


def filter_sql(filters: SearchFilters | None) -> str | None:
    """SQL prefilter for LanceDB; values are quoted, never interpolated raw."""
    if filters is None or filters.is_empty():
        return None
    clauses = []
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        raise InputError(f"date_from {filters.date_from} is after date_to {filters.date_to}")
    if filters.date_from:
        clauses.append(f"date >= date '{filters.date_from.isoformat()}'")
    if filters.date_to:
        clauses.append(f"date <= date '{filters.date_to.isoformat()}'")
    if filters.tickers:
        clauses.append(f"array_has_any(tickers, [{_sql_list(t.upper() for t in filters.tickers)}])")
    if filters.tags:
        clauses.append(f"array_has_any(tags, [{_sql_list(t.lower() for t in filters.tags)}])")
    if filters.doc_ids:
        clauses.append(f"doc_id IN ({_sql_list(filters.doc_ids)})")
    return " AND ".join(clauses)


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
    )
