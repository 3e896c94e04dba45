"""LanceDB tables, local or on object storage: one per (site, collection); atomic writes under the writer
lock, indexes, info.

Why one table per collection rather than one big table with site/collection columns: collections of
one site are searched separately (the resources index, ticker pages, catalyst notes), re-ingest and
``--prune`` work per collection, each table records the embedder that built it, and the ANN index
threshold applies to each corpus on its own size. Searching several collections merges per-table
results (:mod:`rag_app.store.search`).

Every write is one LanceDB commit (a new table version): ``merge_insert`` replaces a batch of
documents' chunks atomically, so a crash between batches leaves each document either wholly old or
wholly new, and the table always readable. Writers of one collection take its writer lock
(:mod:`rag_app.store.locks`, :meth:`VectorStore.writer`) around their read-compare-write, so two writers
never both insert the same chunk ids; :meth:`VectorStore.duplicate_ids` and :meth:`VectorStore.dedupe`
detect and repair tables written before that (or by a writer on another host).

The database is opened by :class:`rag_app.store.connection.Database` (one code path for a local
directory and an ``s3://``, ``gs://`` or ``az://`` URI); it keeps each table's handle and hands out one
at the latest commit from :meth:`VectorStore.open_table` (at most ``read_consistency_s`` behind), so a
search sees other processes' commits without reopening its tables, and all reads of one query see one
version (a handle once handed out is never moved). Inside :meth:`VectorStore.writer` the writing thread
gets handles of its own at the latest version instead (:meth:`rag_app.store.connection.Database.writing`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rag_app.core.hardware import release_freed_memory
from rag_app.core.settings import SearchMode, Settings
from rag_app.core.types import Passage, SearchFilters
from rag_app.store.connection import Database, display_location
from rag_app.store.doc_index import doc_table_name, refresh_doc_table
from rag_app.store.locks import writer_locks
from rag_app.store.schema import (
    FTS_COLUMN,
    HEADER_COLUMN,
    check_embedder,
    chunk_schema,
    stored_embedder,
    table_name,
)
from rag_app.store.search import search_tables
from rag_app.store.sql import sql_list
from rag_app.store.upkeep import optimize_table

log = logging.getLogger("rag_app.store.vector_store")


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


@dataclass(frozen=True)
class DocumentInfo:
    """One stored document, as a listing shows it (from its chunks' rows, without their vectors)."""

    doc_id: str
    title: str
    source: str
    doc_hash: str
    chunks: int
    date: dt.date | None
    #: When the document's rows were last written (None for tables from schema 1).
    updated: dt.datetime | None = None


class VectorStore:
    """The LanceDB database at ``settings.db_location`` (a local directory or an object-store URI)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings)
        self.locks = writer_locks(settings)

    def __repr__(self) -> str:
        return f"VectorStore({display_location(self.db.location)!r})"

    @contextmanager
    def writer(self, site: str, collection: str) -> Iterator[None]:
        """Exclusive write access to one collection: hold it around any read-compare-write.

        Inside it, this thread's :meth:`open_table` (and the document table's hand-out) gives handles
        of the writer's own, at the latest version whatever ``read_consistency_s``: the diff is
        against the latest commit, and the writer's commits never move a handle a reader holds."""
        name = table_name(site, collection)
        with self.locks.hold(site, collection), self.db.writing([name, doc_table_name(name)]):
            yield

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
        return self.db.table_names()

    def open_table(self, site: str, collection: str) -> Any | None:
        """The collection's table (a shared handle at the latest version, within ``read_consistency_s``;
        inside :meth:`writer`, the writer's own), or None if it has none. Hold it for one operation."""
        return self.db.get(table_name(site, collection))

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

    def list_documents(self, table: Any, *, limit: int, offset: int = 0) -> tuple[int, list[DocumentInfo]]:
        """``(total documents, one page of them ordered by id)``: the chunk rows aggregated by
        ``doc_id`` (title, source and hash are the document's, the same on each of its chunks)."""
        stamped = "ingested_at" in table.schema.names
        rows = read_columns(
            table, ["doc_id", "doc_hash", "title", "source", "date"] + ["ingested_at"] * stamped
        )
        firsts = [(c, "first") for c in ("doc_hash", "title", "source", "date")]
        latest = [("ingested_at", "max")] if stamped else []
        docs = rows.group_by("doc_id", use_threads=False).aggregate([("doc_id", "count"), *firsts, *latest])
        page = docs.sort_by("doc_id").slice(offset, limit).to_pylist()
        return docs.num_rows, [
            DocumentInfo(
                doc_id=d["doc_id"],
                title=d["title_first"] or "",
                source=d["source_first"] or "",
                doc_hash=d["doc_hash_first"] or "",
                chunks=d["doc_id_count"],
                date=d["date_first"],
                updated=d.get("ingested_at_max"),
            )
            for d in page
        ]

    # ------------------------------------------------------------------------------ writes
    def replace_documents(
        self,
        table: Any,
        rows: pa.Table | pa.RecordBatchReader,
        doc_ids: Iterable[str],
        *,
        all_new: bool = False,
    ) -> None:
        """Atomically make ``rows`` the only chunks of ``doc_ids`` (one commit).

        ``all_new``: none of ``doc_ids`` is in the table (the caller checked under the writer lock), so
        the rows are appended instead of merged.

        ``rows`` may be a stream (a ``RecordBatchReader``): the commit then reads it batch by batch,
        so a large document's rows need not all be in memory at once to land in one commit.
        """
        ids = sorted(set(doc_ids))
        if not ids:
            return
        if all_new:
            # Nothing to replace: an append streams the rows into new fragments in one commit, where
            # merge_insert's join would hold them all (a 50 MB document's rows are ~200 MB of Arrow).
            table.add(rows)
            return
        (
            table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"doc_id IN ({sql_list(ids)})")
            .execute(rows)
        )

    def delete_documents(self, table: Any, doc_ids: Iterable[str]) -> None:
        ids = sorted(set(doc_ids))
        if ids:
            table.delete(f"doc_id IN ({sql_list(ids)})")

    def refresh_indexes(
        self,
        table: Any,
        *,
        changed: bool = True,
        documents: Iterable[str] | None = (),
        removed: Iterable[str] = (),
    ) -> list[str]:
        """Full-text index always; the ANN index once the table passes ``ann_threshold_rows``; the
        document table (:mod:`rag_app.store.doc_index`) for ``documents`` written and ``removed``
        (``documents=None``: every document, after a whole-table rewrite).

        Below the threshold a flat scan is both exact and fast enough (see README benchmarks).
        ``changed=False`` (nothing was written) only creates indexes that are missing: ``optimize``
        compacts and re-indexes, which commits new table versions even when no row changed.
        Every writer calls this after its commit, so the derived structures follow each write here
        rather than at each call site. Returns the names of chunk-table indexes created or updated.
        """
        from lancedb.index import FTS

        retention_s = self.settings.maintain_retention_s
        refresh_doc_table(
            self.db, table, table.name, doc_ids=documents, removed=removed, retention_s=retention_s
        )
        release_freed_memory()  # what the document table's reads freed, before an index build
        rows = table.count_rows()
        existing = {idx.name: idx for idx in table.list_indices()}
        touched: list[str] = []
        if rows == 0:
            return touched
        for column in (FTS_COLUMN, HEADER_COLUMN):
            if f"{column}_idx" not in existing and column in table.schema.names:
                fts = FTS(memory_limit=self.settings.fts_build_memory_mb, num_workers=1)
                table.create_index(column, config=fts, replace=True)
                touched.append(f"{column}_idx")
        has_vector_index = "vector_idx" in existing
        if not has_vector_index and rows >= self.settings.ann_threshold_rows:
            table.create_index("vector", config=ann_index_config(self.settings.ann_index_type), replace=True)
            touched.append("vector_idx")
        if existing and changed:
            # compacts, folds newly written rows into the indexes that already existed, and removes
            # versions superseded more than the retention ago (rag_app.store.upkeep)
            optimize_table(table, retention_s=retention_s)
        return touched

    def info(self, site: str, collection: str) -> TableInfo | None:
        table = self.open_table(site, collection)
        if table is None:
            return None
        model, dimension = stored_embedder(table)
        docs = read_columns(table, ["doc_id"])["doc_id"]
        dups = self.duplicate_ids(table)
        return TableInfo(
            site,
            collection,
            table.count_rows(),
            len(set(docs.to_pylist())),
            model or "?",
            dimension,
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
                .where(f"id IN ({sql_list(sorted(dups))})")
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
        title_boost: float | None = None,
    ) -> list[Passage]:
        """Top ``k`` chunks of ``site`` over ``collections`` by vector, full-text or hybrid (RRF) search.

        ``title_boost``: weight of a header match in full-text search (``None``: the setting)."""
        tables = [(table_name(site, c), self.open_table(site, c)) for c in collections]
        return search_tables(
            [(name, table) for name, table in tables if table is not None],
            mode=mode,
            k=k,
            query_text=query_text,
            query_vector=query_vector,
            model_id=model_id,
            filters=filters,
            ann_ef=self.settings.ann_ef,
            rrf_k=self.settings.rrf_k,
            title_boost=self.settings.fts_title_boost if title_boost is None else title_boost,
        )

    # ------------------------------------------------------------------------------ fine-tuning
    def chunk_texts(self, site: str, collection: str, doc_ids: Iterable[str]) -> list[dict[str, Any]]:
        """``id``, ``doc_id``, ``chunk_index``, ``title``, ``text`` of every chunk of ``doc_ids``, by
        document and chunk order (the positives a reranker is trained on come from here)."""
        table = self.open_table(site, collection)
        ids = sorted(set(doc_ids))
        if table is None or not ids:
            return []
        rows = (
            table.search()
            .select(["id", "doc_id", "chunk_index", "title", "text"])
            .where(f"doc_id IN ({sql_list(ids)})")
            .limit(table.count_rows())
            .to_arrow()
            .to_pylist()
        )
        return sorted(rows, key=lambda r: (r["doc_id"], r["chunk_index"]))

    def rows_without_vectors(self, site: str, collection: str) -> pa.Table | None:
        """Every row of a collection, all columns but ``vector`` (None when the table does not exist)."""
        table = self.open_table(site, collection)
        if table is None:
            return None
        return read_columns(table, [f.name for f in table.schema if f.name != "vector"])

    def rewrite_vectors(
        self, site: str, collection: str, rows: pa.Table, vectors: np.ndarray, model_id: str
    ) -> Any:
        """Replace the collection with ``rows`` and new ``vectors`` recorded under ``model_id``, in one
        commit (an overwrite: readers see the old table or the new one, never a mix). Hold
        :meth:`writer` around the read of ``rows`` and this call; indexes are rebuilt after it. Columns
        that ``rows`` lacks (a table of an older schema version) are written as nulls."""
        schema = chunk_schema(int(vectors.shape[1]), model_id)
        present = set(rows.column_names)
        arrays = [
            rows.column(f.name).cast(f.type) if f.name in present else pa.nulls(rows.num_rows, f.type)
            for f in schema
            if f.name != "vector"
        ]
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, type=schema.field("vector").type))
        data = pa.Table.from_arrays(arrays, schema=schema)
        table = self.db.create_table(table_name(site, collection), data, schema=schema, mode="overwrite")
        self.refresh_indexes(table, documents=None)  # new vectors: every document row is rebuilt
        return table


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
