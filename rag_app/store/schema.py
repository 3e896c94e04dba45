"""The chunk table's shape: Arrow schema, table naming, rows for a batch, and the embedder it records.

Every table records the embedder model and dimension that built it in its schema metadata, so a
search or an ingest with a different embedder is refused (:func:`check_embedder`) instead of
comparing vectors from two spaces. Rows are always built in the table's own schema so column types
never drift between writes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from rag_app.core.errors import EmbedderMismatchError
from rag_app.core.types import Chunk

#: "2" added the chunk's place in its document: start_char, end_char, page_start, page_end (nullable),
#: its ``header`` (title > headings, full-text indexed on its own so it can be weighted) and
#: ``ingested_at`` (when the row was written: the documents listing's "updated").
#: Tables written by "1" lack those columns; they stay readable (the columns read as null) and writable
#: (rows are built in the table's own schema), and re-indexing into a fresh table fills them.
SCHEMA_VERSION = "2"
#: Columns added by schema 2 (int32, nullable).
OFFSET_COLUMNS = ("start_char", "end_char", "page_start", "page_end")
META_MODEL = b"rag.embedder_model"
META_DIM = b"rag.dimension"
META_SCHEMA = b"rag.schema_version"
#: The column the full-text index covers: header line + chunk text (what the embedder saw).
FTS_COLUMN = "search_text"
#: The header line alone (title > heading path), indexed separately for title/heading weighting.
HEADER_COLUMN = "header"


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
            *(pa.field(name, pa.int32(), nullable=True) for name in OFFSET_COLUMNS),
            pa.field(HEADER_COLUMN, pa.string()),
            pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
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
    """Arrow rows for a batch of chunks, in the table's schema (so types never drift).

    Only the schema's columns are built: a table written by an older schema version (without the
    offset columns) is written in its own shape, and the chunks' offsets are left out.

    The vectors go in as one fixed-size-list array built from the float32 matrix (no Python list of
    floats per row): a batch's rows cost about what their Arrow buffers do.
    """
    columns = {
        "id": [c.id for c in chunks],
        "doc_id": [c.doc_id for c in chunks],
        "doc_hash": [c.doc_hash for c in chunks],
        "site": [c.site for c in chunks],
        "collection": [c.collection for c in chunks],
        "chunk_index": [c.chunk_index for c in chunks],
        "title": [c.title for c in chunks],
        "text": [c.text for c in chunks],
        FTS_COLUMN: list(search_texts),
        "source": [c.source for c in chunks],
        "heading_path": [c.heading_path for c in chunks],
        "date": [c.date for c in chunks],
        "tickers": [c.tickers for c in chunks],
        "tags": [c.tags for c in chunks],
        "metadata_json": [json.dumps(c.metadata, default=str, sort_keys=True) for c in chunks],
        **{name: [getattr(c, name) for c in chunks] for name in OFFSET_COLUMNS},
        # search text = header + "\n" + text (or the text alone): the header is what precedes the text
        HEADER_COLUMN: [
            st[: len(st) - len(c.text)].rstrip("\n") for c, st in zip(chunks, search_texts, strict=False)
        ],
        "ingested_at": [dt.datetime.now(dt.UTC)] * len(chunks),
    }
    if len(search_texts) != len(chunks) or len(vectors) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks, {len(search_texts)} search texts and {len(vectors)} vectors")
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name != "vector"]
    vector_type = schema.field("vector").type
    flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    if len(chunks) and flat.size != len(chunks) * vector_type.list_size:
        dims = flat.size // len(chunks)
        raise ValueError(f"vectors have {dims} dimensions, the table {vector_type.list_size}")
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), type=vector_type))
    return pa.Table.from_arrays(arrays, schema=schema)


def stored_embedder(table: Any) -> tuple[str, int]:
    """(model id, dimension) recorded in a table's schema metadata."""
    meta = table.schema.metadata or {}
    return meta.get(META_MODEL, b"").decode(), int(meta.get(META_DIM, b"0"))


def check_embedder(table: Any, model_id: str, dimension: int, *, where: str) -> None:
    """Refuse to mix vector spaces: the table's recorded embedder must be the one in use."""
    stored_model, stored_dim = stored_embedder(table)
    if stored_model != model_id or stored_dim != dimension:
        raise EmbedderMismatchError(
            f"table {where} was built with embedder {stored_model!r} ({stored_dim}-d) but the current "
            f"settings use {model_id!r} ({dimension}-d); set RAG_EMBEDDER_MODEL/RAG_EMBEDDER_BACKEND back, "
            f"or re-index into a fresh data dir (RAG_DATA_DIR)"
        )
