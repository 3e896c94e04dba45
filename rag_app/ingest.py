"""load -> chunk -> embed -> upsert, idempotent, with progress.

A run first parses every input (so a malformed file stops it before any write), then compares each
document's content hash with what the table holds: unchanged documents cost nothing, changed ones
have their chunks replaced, new ones are added, and with ``prune`` documents no longer present are
removed. Changed and new documents are written in batches, each batch one atomic LanceDB commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rag_app.chunking import chunk_document, document_hash, embedding_text
from rag_app.embeddings import Embedder, get_embedder
from rag_app.loaders import OnError, load_paths
from rag_app.settings import Settings
from rag_app.store import VectorStore, chunks_to_table
from rag_app.types import Chunk, Document

#: Documents per commit: large enough to amortise a commit, small enough that a crash loses little.
DEFAULT_BATCH_DOCS = 64


@dataclass
class IngestReport:
    """Counts of what an ingest did, for the CLI summary and tests."""

    site: str
    collection: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks_written: int = 0
    files: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    indexes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.site}/{self.collection}: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed ({self.chunks_written} chunks written "
            f"from {self.files} files in {self.seconds:.1f}s)"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} bad records skipped"
        return text


def chunk_fingerprint(settings: Settings, embedder: Embedder) -> str:
    """Everything besides the text that changes a document's chunks: changing it re-embeds."""
    return f"{embedder.model_id}|{settings.chunk_tokens}|{settings.chunk_overlap}|{embedder.max_tokens}"


def ingest_paths(
    settings: Settings,
    site: str,
    collection: str,
    paths: Sequence[Path | str],
    *,
    prune: bool = False,
    on_error: OnError = "stop",
    csv_columns: dict[str, str] | None = None,
    progress: bool = True,
    batch_docs: int = DEFAULT_BATCH_DOCS,
) -> IngestReport:
    """Load ``paths`` and ingest them into ``site``/``collection``."""
    store = VectorStore(settings)
    store.check_site(site, collection)
    loaded = load_paths(paths, on_error=on_error, csv_columns=csv_columns)
    report = ingest_documents(
        settings,
        site,
        collection,
        loaded.documents,
        prune=prune,
        progress=progress,
        batch_docs=batch_docs,
        store=store,
    )
    report.files = loaded.files
    report.skipped = [str(e) for e in loaded.errors]
    return report


def ingest_documents(
    settings: Settings,
    site: str,
    collection: str,
    documents: Sequence[Document],
    *,
    prune: bool = False,
    progress: bool = True,
    batch_docs: int = DEFAULT_BATCH_DOCS,
    store: VectorStore | None = None,
    embedder: Embedder | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> IngestReport:
    """Upsert already-loaded documents. ``on_batch(n)`` is called after each committed batch."""
    start = time.perf_counter()
    store = store or VectorStore(settings)
    store.check_site(site, collection)
    embedder = embedder or get_embedder(settings)
    table = store.create_or_open(site, collection, embedder.model_id, embedder.dimension)
    report = IngestReport(site, collection)
    existing = store.doc_hashes(table)
    fingerprint = chunk_fingerprint(settings, embedder)

    pending: list[Document] = []
    for doc in documents:
        old = existing.get(doc.id)
        if old is None:
            report.added += 1
            pending.append(doc)
        elif old != document_hash(doc, fingerprint):
            report.updated += 1
            pending.append(doc)
        else:
            report.unchanged += 1

    schema = table.schema
    bar = tqdm(
        total=len(pending), unit="doc", desc=f"ingest {site}/{collection}", disable=not progress, leave=False
    )
    try:
        for batch_no, i in enumerate(range(0, len(pending), batch_docs), start=1):
            batch = pending[i : i + batch_docs]
            chunks: list[Chunk] = []
            for doc in batch:
                chunks += chunk_document(
                    doc,
                    site=site,
                    collection=collection,
                    tokenizer=embedder,
                    chunk_tokens=settings.chunk_tokens,
                    overlap=settings.chunk_overlap,
                    max_input_tokens=embedder.max_tokens,
                    fingerprint=fingerprint,
                )
            texts = [embedding_text(c) for c in chunks]
            vectors = embedder.embed_documents(texts)
            store.replace_documents(
                table, chunks_to_table(chunks, texts, vectors, schema), [d.id for d in batch]
            )
            report.chunks_written += len(chunks)
            bar.update(len(batch))
            if on_batch:
                on_batch(batch_no)
    finally:
        bar.close()

    if prune:
        gone = set(existing) - {d.id for d in documents}
        store.delete_documents(table, gone)
        report.removed = len(gone)
    report.indexes = store.refresh_indexes(table)
    report.seconds = time.perf_counter() - start
    return report
