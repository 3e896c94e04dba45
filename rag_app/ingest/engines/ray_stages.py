"""What the Ray workers run: scan files, load the pending documents, chunk + embed + write fragments.

Each stage is a Ray Data ``map_batches`` function (or, for embedding, a class: Ray keeps one
instance per actor, so the model loads once per actor, not once per batch) over Arrow batches with
fixed schemas. They reuse the library's own steps (``load_file``, ``check_document_size``,
``document_hash``, ``chunk_document``, ``embed_rows``), so a document gets the same ids, texts, hashes
and rows as the single-process engine gives it.

Errors a user can act on (a malformed file, an embedder that does not match the table, a model that
is not on the worker) travel back as data (an ``error_type`` and an ``error`` column) instead of
being raised: Ray replaces an exception raised in a worker by its own wrapper and loses the original
class, and the driver must raise the same :class:`~rag_app.core.errors.RagError` the local engine
raises (the CLI's exit code and message depend on it). Anything else (a bug) is raised as usual.
"""

from __future__ import annotations

import json
import pickle
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from rag_app.core.errors import (
    EmbedderMismatchError,
    InputError,
    LoaderError,
    ModelNotAvailableError,
    RagError,
    ServiceUnavailableError,
)
from rag_app.core.settings import Settings
from rag_app.core.types import Chunk, Document
from rag_app.ingest.chunking import document_hash, has_text
from rag_app.ingest.loaders import OnError, load_file
from rag_app.ingest.pipeline import check_document_size, chunk_document, embed_rows
from rag_app.models.embeddings import Embedder, load_embedder

#: One row per document found by the scan, or per error: ``kind`` is "doc", "error" (a loader error:
#: fatal under on_error="stop", a skipped record under "skip") or "too_large" (over the size limit).
#: ``doc_hash`` is empty for a document without text.
SCAN_SCHEMA = pa.schema(
    [
        ("file_index", pa.int64()),
        ("kind", pa.string()),
        ("position", pa.int64()),
        ("doc_id", pa.string()),
        ("doc_hash", pa.string()),
        ("path", pa.string()),
        ("reason", pa.string()),
        ("line", pa.int64()),
    ]
)
#: A document to chunk and embed (pickled: the exact object, no re-validation), and whether the table
#: holds an older version of it (replaced by merge on the driver) or not (appended as a fragment).
DOC_SCHEMA = pa.schema(
    [("doc", pa.binary()), ("update", pa.bool_()), ("error_type", pa.string()), ("error", pa.string())]
)
#: What an embedding actor did with one batch of documents: the fragments it wrote for new documents
#: (Lance ``FragmentMetadata`` as JSON, committed by the driver) and the rows of changed ones.
RESULT_SCHEMA = pa.schema(
    [
        ("new_ids", pa.list_(pa.string())),
        ("fragments", pa.list_(pa.string())),
        ("new_chunks", pa.int64()),
        ("changed_ids", pa.list_(pa.string())),
        ("changed_rows", pa.binary()),
        ("changed_chunks", pa.int64()),
        ("error_type", pa.string()),
        ("error", pa.string()),
    ]
)
#: The errors rebuilt with their own class on the driver; any other RagError comes back as RagError.
_ERRORS: dict[str, type[RagError]] = {
    cls.__name__: cls
    for cls in (RagError, InputError, ModelNotAvailableError, EmbedderMismatchError, ServiceUnavailableError)
}


def raise_worker_error(error_type: str, message: str) -> None:
    """Raise on the driver the error a worker reported (same class where it is a known one)."""
    raise _ERRORS.get(error_type, RagError)(message)


def _parse(
    path: str,
    root: str,
    *,
    on_error: OnError,
    csv_columns: dict[str, str] | None,
    max_bytes: int,
    errors: list[LoaderError],
) -> list[Document]:
    """``path``'s documents as the local loader reads them (ids relative to ``root``). The scan and the
    load stage parse a file through this one call, so a document's position in the scan is its
    position when it is loaded again for embedding."""
    return load_file(
        Path(path),
        root=Path(root),
        on_error=on_error,
        csv_columns=csv_columns,
        errors=errors,
        max_bytes=max_bytes,
    )


def _table(schema: pa.Schema, rows: Sequence[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


# ---------------------------------------------------------------------------------------------- scan
def scan_files(
    batch: pa.Table,
    *,
    on_error: OnError,
    csv_columns: dict[str, str] | None,
    max_bytes: int,
    fingerprint: str,
) -> pa.Table:
    """Parse each file of ``batch`` (``file_index``, ``path``, ``root``) and describe what it holds.

    Parsing everything before the first write is what lets a malformed file stop the run with nothing
    written, and the content hashes are the diff. Only ids and hashes go back to the driver, never the
    text: the pending documents are parsed again, where they are embedded.
    """
    out: list[dict[str, Any]] = []
    for item in batch.to_pylist():
        file_index, path, root = item["file_index"], item["path"], item["root"]
        errors: list[LoaderError] = []
        base = {"file_index": file_index, "path": path, "doc_id": "", "doc_hash": "", "line": -1}
        try:
            docs = _parse(
                path, root, on_error=on_error, csv_columns=csv_columns, max_bytes=max_bytes, errors=errors
            )
        except LoaderError as err:  # on_error="stop": the first bad record of the file
            errors, docs = [err], []
        for i, err in enumerate(errors):
            line = -1 if err.line is None else err.line
            out.append(
                base | {"kind": "error", "position": i, "path": err.path, "reason": err.reason, "line": line}
            )
        for position, doc in enumerate(docs):
            row = base | {"kind": "doc", "position": position, "doc_id": doc.id, "reason": ""}
            try:
                check_document_size(doc, max_bytes)
            except InputError as err:
                out.append(row | {"kind": "too_large", "reason": str(err)})
                continue
            out.append(row | {"doc_hash": document_hash(doc, fingerprint) if has_text(doc) else ""})
    return _table(SCAN_SCHEMA, out)


# ---------------------------------------------------------------------------------------------- load
def load_pending(
    batch: pa.Table, *, on_error: OnError, csv_columns: dict[str, str] | None, max_bytes: int
) -> pa.Table:
    """The documents to write from each file of ``batch`` (``path``, ``root``, and the ``positions``,
    ``doc_ids`` and ``updates`` of its pending documents), parsed again on the worker."""
    out: list[dict[str, Any]] = []
    for item in batch.to_pylist():
        path, root = item["path"], item["root"]
        try:
            docs = _parse(
                path, root, on_error=on_error, csv_columns=csv_columns, max_bytes=max_bytes, errors=[]
            )
        except LoaderError as err:
            out.append(
                _doc_error(
                    InputError(f"{err}: the file changed while it was being ingested; run the ingest again")
                )
            )
            continue
        for position, doc_id, update in zip(item["positions"], item["doc_ids"], item["updates"], strict=True):
            if position >= len(docs) or docs[position].id != doc_id:
                out.append(
                    _doc_error(
                        InputError(
                            f"{path}: the file changed while it was being ingested (document {doc_id!r} "
                            "moved or went); run the ingest again"
                        )
                    )
                )
                continue
            out.append({"doc": pickle.dumps(docs[position]), "update": update, "error_type": "", "error": ""})
    return _table(DOC_SCHEMA, out)


def document_rows(documents: Sequence[tuple[Document, bool]]) -> list[dict[str, Any]]:
    """Rows of :data:`DOC_SCHEMA` for documents already in memory (``(document, update)`` pairs)."""
    return [
        {"doc": pickle.dumps(doc), "update": update, "error_type": "", "error": ""}
        for doc, update in documents
    ]


def _doc_error(err: RagError) -> dict[str, Any]:
    return {"doc": b"", "update": False, "error_type": type(err).__name__, "error": str(err)}


# ---------------------------------------------------------------------------------------------- embed
class EmbedActor:
    """One Ray actor's embedder, loaded once: chunks, embeds and writes a batch of documents.

    New documents' rows stream into Lance fragments written straight to the table's storage (visible
    only once the driver commits them), embedded ``embed_batch_size`` chunks at a time, so an actor
    holds one embed batch of rows, not a document's worth. Changed documents' rows go back to the
    driver, which replaces the old ones in one merge. The actor refuses to embed with a model other
    than the one the driver guarded the table with (model id, dimension and input length: the
    fingerprint in every document hash depends on them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        site: str,
        collection: str,
        identity: tuple[str, int, int],
        fingerprint: str,
        table_uri: str,
        schema: pa.Schema,
    ) -> None:
        self.settings, self.site, self.collection = settings, site, collection
        self.fingerprint, self.table_uri, self.schema = fingerprint, table_uri, schema
        self.storage_options = dict(settings.storage_options) or None
        self.failure: RagError | None = None
        try:
            self.embedder: Embedder = load_embedder(settings)
            loaded = (self.embedder.model_id, self.embedder.dimension, self.embedder.max_tokens)
            if loaded != tuple(identity):
                raise EmbedderMismatchError(
                    f"the Ray embedding actors loaded embedder {loaded[0]!r} ({loaded[1]}-d, {loaded[2]} "
                    f"input tokens) but {site}/{collection} is being ingested with {identity[0]!r} "
                    f"({identity[1]}-d, {identity[2]} input tokens); give every node the same "
                    "RAG_EMBEDDER_* settings and model files (a site's activated fine-tuned embedder is "
                    "not used by --engine ray: ingest that site without it)"
                )
        except RagError as err:
            self.failure = err
        if self.failure is None:
            self.failure = unreadable_table(table_uri, self.storage_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        failure = self.failure or next(
            (_ERRORS.get(r["error_type"], RagError)(r["error"]) for r in rows if r["error"]), None
        )
        if failure is not None:
            return _result(error=failure)
        docs = [(pickle.loads(r["doc"]), r["update"]) for r in rows]
        try:
            new = [doc for doc, update in docs if not update]
            fragments, new_chunks = self._write_fragments(new)
            changed = [doc for doc, update in docs if update]
            changed_rows, changed_chunks = self._changed_rows(changed)
        except RagError as err:
            return _result(error=err)
        return _result(
            new_ids=[d.id for d in new],
            fragments=fragments,
            new_chunks=new_chunks,
            changed_ids=[d.id for d in changed],
            changed_rows=changed_rows,
            changed_chunks=changed_chunks,
        )

    def _batches(self, docs: Sequence[Document]) -> Iterator[pa.RecordBatch]:
        """Rows of ``docs``' chunks, embedded ``embed_batch_size`` chunks at a time."""
        buffer: list[Chunk] = []
        for doc in docs:
            for chunk in chunk_document(
                self.settings,
                doc,
                site=self.site,
                collection=self.collection,
                embedder=self.embedder,
                fingerprint=self.fingerprint,
            ):
                buffer.append(chunk)
                if len(buffer) >= self.settings.embed_batch_size:
                    yield from embed_rows(self.embedder, buffer, self.schema).to_batches()
                    buffer = []
        if buffer:
            yield from embed_rows(self.embedder, buffer, self.schema).to_batches()

    def _write_fragments(self, docs: Sequence[Document]) -> tuple[list[str], int]:
        """Lance fragments holding ``docs``' rows (JSON metadata for the driver's commit), and their rows."""
        if not docs:
            return [], 0
        from lance.fragment import write_fragments

        written = 0

        def counted() -> Iterator[pa.RecordBatch]:
            nonlocal written
            for rows in self._batches(docs):
                written += rows.num_rows
                yield rows

        reader = pa.RecordBatchReader.from_batches(self.schema, counted())
        fragments = write_fragments(
            reader, self.table_uri, mode="append", storage_options=self.storage_options
        )
        return [json.dumps(f.to_json()) for f in fragments], written

    def _changed_rows(self, docs: Sequence[Document]) -> tuple[bytes, int]:
        """``docs``' rows as an Arrow IPC stream for the driver's merge, and how many there are."""
        if not docs:
            return b"", 0
        sink = pa.BufferOutputStream()
        rows = 0
        with pa.ipc.new_stream(sink, self.schema) as stream:
            for batch in self._batches(docs):
                stream.write_batch(batch)
                rows += batch.num_rows
        return sink.getvalue().to_pybytes(), rows


def unreadable_table(uri: str, storage_options: dict[str, str] | None) -> RagError | None:
    """``None`` when this worker can open the table at ``uri``, else the error to report.

    An actor writes its fragments next to the table it is given; if it cannot open that table (a local
    path on another node, storage options this node lacks), its fragments would land where the driver
    cannot commit them, so it writes nothing and says why instead.
    """
    import lance

    try:
        lance.dataset(uri, storage_options=storage_options)
    except Exception as exc:  # lance raises ValueError, OSError or its own errors for a table it cannot open
        reason = " ".join(str(exc).split())[:300]
        return InputError(
            f"a Ray embedding actor on node {socket.gethostname()} cannot open the table at {uri} "
            f"({reason}); every node must reach the database: set RAG_DB_URI to object storage (s3://, "
            "gs://, az://) and give every node the same RAG_STORAGE_OPTIONS"
        )
    return None


def _result(
    *,
    new_ids: Sequence[str] = (),
    fragments: Sequence[str] = (),
    new_chunks: int = 0,
    changed_ids: Sequence[str] = (),
    changed_rows: bytes = b"",
    changed_chunks: int = 0,
    error: RagError | None = None,
) -> pa.Table:
    row = {
        "new_ids": list(new_ids),
        "fragments": list(fragments),
        "new_chunks": new_chunks,
        "changed_ids": list(changed_ids),
        "changed_rows": changed_rows,
        "changed_chunks": changed_chunks,
        "error_type": type(error).__name__ if error else "",
        "error": str(error) if error else "",
    }
    return _table(RESULT_SCHEMA, [row])
