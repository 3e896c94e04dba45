"""load -> chunk -> embed -> upsert, idempotent, with progress, one writer per collection at a time.

A run first parses every input (so a malformed or oversized file stops it before any write), then,
holding the collection's writer lock (:mod:`rag_app.store.locks`), compares each document's content hash
with what the table holds: unchanged documents cost nothing, changed ones have their chunks replaced,
new ones are added, and with ``prune`` documents no longer present are removed. The diff is computed
under the lock, so a second concurrent run sees the first one's commit and finds nothing to do.

Writing (:mod:`rag_app.ingest.writer`) streams: chunks are embedded ``embed_batch_size`` at a time
and their rows staged on disk, so memory stays bounded however large a document is, while commits
fall on document boundaries only (a crash leaves every document wholly old or wholly new). A run
with nothing to do commits nothing: no new table version, no index rebuild.

Every engine runs the same locked part (:func:`locked_ingest`: guard, diff, prune, write, finish) and
the same steps below the entry points (chunk and rows come from :mod:`rag_app.ingest.writer`); an
engine brings only its write step (:data:`~rag_app.ingest.writer.WritePending`): the single-process
:func:`~rag_app.ingest.writer.write_streamed`, or the Ray engine's (:mod:`rag_app.ingest.engines`,
``ingest --engine ray``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rag_app.core.errors import InputError
from rag_app.core.hardware import release_freed_memory
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.chunking import document_hash, has_text
from rag_app.ingest.loaders import OnError, load_paths
from rag_app.ingest.writer import WriteJob, WritePending, write_streamed
from rag_app.ingest.writer import chunk_document as chunk_document  # re-exported: a step both engines run
from rag_app.ingest.writer import embed_rows as embed_rows  # re-exported: a step both engines run
from rag_app.models.embeddings import Embedder, load_embedder
from rag_app.store.schema import check_embedder, table_name
from rag_app.store.vector_store import VectorStore

log = logging.getLogger("rag_app.ingest.pipeline")

#: An engine's pending work: documents (the single-process engine) or files to load again (Ray).
P = TypeVar("P")

#: Documents per commit: large enough to amortise a commit, small enough that a crash loses little.
DEFAULT_BATCH_DOCS = 64


class PruneRefusedError(InputError):
    """A prune would remove more of a collection than ``prune_max_fraction`` allows."""


@dataclass
class IngestReport:
    """Counts of what an ingest did (or, with ``dry_run``, would do), for the CLI summary and tests."""

    site: str
    collection: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    empty: int = 0
    chunks_written: int = 0
    files: int = 0
    skipped: list[str] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    indexes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"{self.site}/{self.collection} (dry run, nothing written): would add {self.added}, "
                f"update {self.updated}, remove {self.removed}; {self.unchanged} unchanged, "
                f"{self.empty} empty skipped"
            )
        text = (
            f"{self.site}/{self.collection}: {self.added} added, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed ({self.chunks_written} chunks written "
            f"from {self.files} files in {self.seconds:.1f}s)"
        )
        if self.empty:
            text += f"; {self.empty} empty documents skipped"
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
    force: bool = False,
    dry_run: bool = False,
    on_error: OnError = "stop",
    csv_columns: dict[str, str] | None = None,
    progress: bool = True,
    batch_docs: int = DEFAULT_BATCH_DOCS,
    embedder: Embedder | None = None,
) -> IngestReport:
    """Load ``paths`` and ingest them into ``site``/``collection`` (files over the size limit refused).

    ``embedder``: the runtime's shared one; without it the embedder the settings name is loaded.
    """
    store = VectorStore(settings)
    store.check_site(site, collection)
    loaded = load_paths(
        paths, on_error=on_error, csv_columns=csv_columns, max_bytes=settings.max_document_bytes
    )
    release_freed_memory()  # the raw bytes and decode buffers of what was just parsed
    report = ingest_documents(
        settings,
        site,
        collection,
        loaded.documents,
        prune=prune,
        force=force,
        dry_run=dry_run,
        progress=progress,
        batch_docs=batch_docs,
        store=store,
        embedder=embedder,
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
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    batch_docs: int = DEFAULT_BATCH_DOCS,
    store: VectorStore | None = None,
    embedder: Embedder | None = None,
    on_batch: Callable[[int], None] | None = None,
    keep_ids: Collection[str] = (),
    write: WritePending = write_streamed,
) -> IngestReport:
    """Upsert already-loaded documents under the collection's writer lock.

    ``prune`` removes documents absent from ``documents``, but refuses (:class:`PruneRefusedError`,
    nothing written) to remove more than ``prune_max_fraction`` of them unless ``force``: an empty or
    mistaken input path must not wipe a collection. ``dry_run`` computes the report and writes nothing.
    ``on_batch(n)`` is called after each committed batch. ``keep_ids``: ids of documents known to be
    present though not passed (a source's unchanged, not re-fetched items): never pruned. ``write``:
    the engine's write step (:func:`write_streamed` here, the Ray engine's in
    :func:`rag_app.ingest.engines.ray_ingest.ray_ingest_documents`); everything around it is the same.
    """
    start = time.perf_counter()
    store = store or VectorStore(settings)
    store.check_site(site, collection)
    for doc in documents:
        check_document_size(doc, settings.max_document_bytes)
    embedder = embedder or load_embedder(settings)
    fingerprint = chunk_fingerprint(settings, embedder)
    report = IngestReport(site, collection, dry_run=dry_run)

    def plan(existing: dict[str, str]) -> tuple[list[Document], set[str]]:
        present = {d.id for d in documents if has_text(d)} | set(keep_ids)
        return diff_documents(documents, existing, fingerprint, report), present

    locked_ingest(
        settings,
        store,
        embedder,
        report,
        plan=plan,
        write=write,
        prune=prune,
        force=force,
        progress=progress,
        batch_docs=batch_docs,
        on_batch=on_batch,
    )
    report.seconds = time.perf_counter() - start
    return report


def locked_ingest(
    settings: Settings,
    store: VectorStore,
    embedder: Embedder,
    report: IngestReport,
    *,
    plan: Callable[[dict[str, str]], tuple[P, set[str]]],
    write: Callable[[WriteJob, P], list[str]],
    prune: bool,
    force: bool,
    progress: bool,
    batch_docs: int,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """The part of an ingest that holds the collection's writer lock, the same for every engine: the
    embedder guard, ``plan`` (given the stored hashes, counts the diff on ``report`` and returns the
    pending work and the ids present in the input), the prune plan, then, unless ``report`` is a dry
    run, ``write`` and :func:`finish_ingest`. Engines differ only in what they plan and write with:
    documents in memory (:func:`ingest_documents`) or files scanned on Ray workers."""
    site, collection, dry_run = report.site, report.collection, report.dry_run
    with store.writer(site, collection):
        table = open_collection(store, site, collection, embedder, dry_run=dry_run)
        existing = store.doc_hashes(table) if table is not None else {}
        pending, present = plan(existing)
        if prune:
            plan_prune(settings, report, existing, present, force=force)
        if dry_run or table is None:
            return
        job = WriteJob(
            settings=settings,
            store=store,
            table=table,
            embedder=embedder,
            fingerprint=chunk_fingerprint(settings, embedder),
            report=report,
            existing=existing,
            progress=progress,
            batch_docs=batch_docs,
            on_batch=on_batch,
        )
        finish_ingest(store, table, report, write(job, pending))


# ---------------------------------------------------------------------------------- reusable steps
# The steps of an ingest that another engine (rag_app.ingest.engines: Ray) runs the same way, so both
# engines guard the table, diff, prune and finish identically.


def open_collection(
    store: VectorStore, site: str, collection: str, embedder: Embedder, *, dry_run: bool
) -> Any:
    """The collection's table, created if missing (``None`` on a dry run of a new collection), after
    the embedder guard: a table built with another embedder is refused. Hold the writer lock."""
    if not dry_run:
        return store.create_or_open(site, collection, embedder.model_id, embedder.dimension)
    table = store.open_table(site, collection)
    if table is not None:
        check_embedder(table, embedder.model_id, embedder.dimension, where=table_name(site, collection))
    return table


def count_document(report: IngestReport, existing: dict[str, str], doc_id: str, doc_hash: str | None) -> bool:
    """Count one document on ``report`` (added, updated, unchanged, or empty when ``doc_hash`` is
    None: it has no text); True when it must be (re)written."""
    if doc_hash is None:  # nothing to chunk: never written, never counted as added
        report.empty += 1
        return False
    old = existing.get(doc_id)
    if old is None:
        report.added += 1
        return True
    if old != doc_hash:
        report.updated += 1
        return True
    report.unchanged += 1
    return False


def diff_documents(
    documents: Sequence[Document], existing: dict[str, str], fingerprint: str, report: IngestReport
) -> list[Document]:
    """Documents to (re)write; counts added/updated/unchanged/empty on ``report``."""
    return [
        doc
        for doc in documents
        if count_document(
            report, existing, doc.id, document_hash(doc, fingerprint) if has_text(doc) else None
        )
    ]


def plan_prune(
    settings: Settings, report: IngestReport, existing: dict[str, str], present: set[str], *, force: bool
) -> None:
    """Record on ``report`` the stored documents absent from ``present``; refuses (before anything is
    written) a prune past ``prune_max_fraction`` unless ``force`` (:class:`PruneRefusedError`)."""
    report.removed_ids = sorted(set(existing) - present)
    report.removed = len(report.removed_ids)
    _check_prune(settings, report, len(existing), force)


def finish_ingest(store: VectorStore, table: Any, report: IngestReport, written: Iterable[str]) -> None:
    """After the writes: remove pruned documents, then refresh the indexes and the document table
    (only what is missing when nothing changed). Hold the writer lock."""
    written = list(written)
    store.delete_documents(table, report.removed_ids)
    # Each phase below (commit, index build, document table) allocates from threads of its own; the
    # memory one freed is returned to the OS before the next, so peaks do not stack (a 50 MB
    # document's ingest peaked 1,260 MB without this: benchmarks/README.md).
    release_freed_memory()
    report.indexes = store.refresh_indexes(
        table,
        changed=bool(written or report.removed_ids),
        documents=written,
        removed=report.removed_ids,
    )
    release_freed_memory()


def check_document_size(doc: Document, limit: int) -> None:
    """Refuse a document over ``limit`` UTF-8 bytes, before anything is written."""
    chars = len(doc.text)
    if chars * 4 <= limit:  # a character is at most 4 bytes: no need to encode
        return
    size = chars if chars > limit else len(doc.text.encode("utf-8"))
    if size > limit:
        raise InputError(
            f"document {doc.id!r} ({doc.source or 'no source'}) is {size:,} bytes, over the limit of "
            f"{limit:,} bytes (RAG_MAX_DOCUMENT_BYTES); split it, or raise the limit"
        )


def _check_prune(settings: Settings, report: IngestReport, total: int, force: bool) -> None:
    share = report.removed / total if total else 0.0
    if force or report.dry_run or share <= settings.prune_max_fraction:
        return
    raise PruneRefusedError(
        f"--prune would remove {report.removed} of {total} documents ({share:.0%}) from "
        f"{report.site}/{report.collection}, over the limit of {settings.prune_max_fraction:.0%} "
        "(RAG_PRUNE_MAX_FRACTION); nothing was written. Check the input paths, list what would go "
        "with --dry-run, or pass --yes to remove them"
    )
