"""What one background ingest job does: parse the uploads, ingest the documents, report per document.

The write is the CLI's: :func:`rag_app.ingest.pipeline.ingest_documents` under the collection's writer
lock, with the server's embedder, so HTTP ingest has the same idempotency (an unchanged document costs
nothing), the same commits on document boundaries (a reader never sees half a document; a crash leaves
each wholly old or wholly new) and the same refusal to mix embedders.

Uploads are parsed first, all of them, before anything is written (:func:`rag_app.ingest.loaders.load_bytes`:
the format from the declared type, the name's suffix or the bytes). With ``on_error="stop"`` (the
default) one unreadable file fails the whole job and nothing is written; with ``"skip"`` the bad files
(and bad records of JSONL/CSV files) are reported as failed and the rest is indexed.

Per-document statuses (added, updated, unchanged; skipped when a document has no text) are read
from the collection just before the write, as the pipeline's own diff does under the lock; the counts
are the pipeline's. If another writer changes the same documents in between, the two can differ: the
job then says so in its notes (the data is right either way: the pipeline diffs under the lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rag_app.core.errors import InputError, LoaderError, RagError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.chunking import document_hash, has_text
from rag_app.ingest.loaders import OnError, load_bytes
from rag_app.ingest.pipeline import chunk_fingerprint, ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.server.limits import Overloaded
from rag_app.server.uploads import Upload
from rag_app.store.vector_store import VectorStore

log = logging.getLogger("rag_app.server.jobs")

DocumentStatus = Literal["added", "updated", "unchanged", "skipped", "failed"]


@dataclass
class IngestInput:
    """What a POST handed to its job: validated JSON documents, or uploaded files to parse."""

    site: str
    collection: str
    documents: list[Document] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    on_error: OnError = "stop"

    @property
    def kind(self) -> str:
        return "upload" if self.uploads else "json"

    @property
    def inputs(self) -> int:
        """Documents or files received."""
        return len(self.uploads) or len(self.documents)

    def close(self) -> None:
        """Drop the uploads' temporary files."""
        for upload in self.uploads:
            upload.close()


@dataclass
class JobOutcome:
    """A finished job's status, per-document results, counts and notes (timings are the runner's)."""

    status: Literal["succeeded", "failed"]
    documents: list[dict[str, Any]]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _result(
    doc_id: str | None, status: DocumentStatus, *, file: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": doc_id, "status": status}
    if file is not None:
        out["file"] = file
    if reason is not None:
        out["reason"] = reason
    return out


def parse_uploads(
    settings: Settings, uploads: Sequence[Upload], on_error: OnError
) -> tuple[list[Document], dict[str, str], list[dict[str, Any]]]:
    """``(documents, doc id -> file name, failures)``; every file is read, whatever fails."""
    documents: list[Document] = []
    origin: dict[str, str] = {}
    failures: list[dict[str, Any]] = []
    for upload in uploads:
        try:
            loaded = load_bytes(
                upload.read(),
                name=upload.name,
                content_type=upload.content_type,
                on_error=on_error,
                max_bytes=settings.max_document_bytes,
            )
        except (LoaderError, InputError) as exc:
            failures.append(_result(None, "failed", file=upload.name, reason=str(exc)))
            continue
        except Exception as exc:  # a parser's own error on a bad upload is the upload's fault, not ours
            log.warning("cannot parse upload %r", upload.name, exc_info=True)
            reason = f"{upload.name}: cannot be parsed ({type(exc).__name__}: {exc})"
            failures.append(_result(None, "failed", file=upload.name, reason=reason))
            continue
        finally:
            upload.close()
        failures.extend(_result(None, "failed", file=upload.name, reason=str(err)) for err in loaded.errors)
        for doc in loaded.documents:
            if doc.id in origin:
                reason = f"document id {doc.id!r} also comes from {origin[doc.id]!r}: rename one of the files"
                failures.append(_result(doc.id, "failed", file=upload.name, reason=reason))
                continue
            origin[doc.id] = upload.name
            documents.append(doc)
    return documents, origin, failures


def classify(
    store: VectorStore, site: str, collection: str, documents: Sequence[Document], fingerprint: str
) -> dict[str, DocumentStatus]:
    """doc id -> what the ingest will do with it, judged against the collection as it is now."""
    table = store.open_table(site, collection)
    existing = store.doc_hashes(table) if table is not None else {}
    statuses: dict[str, DocumentStatus] = {}
    for doc in documents:
        if not has_text(doc):
            statuses[doc.id] = "skipped"
        elif doc.id not in existing:
            statuses[doc.id] = "added"
        else:
            statuses[doc.id] = (
                "unchanged" if existing[doc.id] == document_hash(doc, fingerprint) else "updated"
            )
    return statuses


def run_ingest(settings: Settings, embedder: Embedder, job: IngestInput) -> JobOutcome:
    """Parse (uploads), then ingest; never raises for a fault of the input or the index (it is the
    outcome's ``error``), only for bugs."""
    start = time.perf_counter()
    documents, origin = job.documents, {}
    failures: list[dict[str, Any]] = []
    if job.uploads:
        documents, origin, failures = parse_uploads(settings, job.uploads, job.on_error)
    parsed = time.perf_counter()
    timings = {"parse_ms": round((parsed - start) * 1000, 1)}
    if failures and job.on_error == "stop":
        not_written = "not written: another file of this job could not be read (on_error=stop)"
        results = failures + [
            _result(d.id, "failed", file=origin.get(d.id), reason=not_written) for d in documents
        ]
        error = (
            f"{len(failures)} file(s) or record(s) could not be read (see documents); nothing was written. "
            "Fix or leave them out, or post again with on_error=skip to index the rest"
        )
        return JobOutcome("failed", results, {"failed": len(results)}, error=error, timings=timings)
    store = VectorStore(settings)
    try:
        statuses = classify(store, job.site, job.collection, documents, chunk_fingerprint(settings, embedder))
        report = ingest_documents(
            settings, job.site, job.collection, documents, progress=False, store=store, embedder=embedder
        )
    except (RagError, Overloaded) as exc:
        reason = (
            f"the job stopped: {exc}. Each document is wholly old or wholly new; post the same documents "
            "again to finish (ingest is idempotent)"
        )
        results = failures + [
            _result(d.id, "failed", file=origin.get(d.id), reason=reason) for d in documents
        ]
        timings["ingest_ms"] = round((time.perf_counter() - parsed) * 1000, 1)
        return JobOutcome("failed", results, {"failed": len(results)}, error=str(exc), timings=timings)
    timings["ingest_ms"] = round((time.perf_counter() - parsed) * 1000, 1)
    results = [
        _result(
            d.id,
            statuses[d.id],
            file=origin.get(d.id),
            reason="no text to index" if statuses[d.id] == "skipped" else None,
        )
        for d in documents
    ]
    counts = {
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "skipped": report.empty,
        "failed": len(failures),
        "chunks_written": report.chunks_written,
    }
    notes = []
    judged = {s: list(statuses.values()).count(s) for s in ("added", "updated", "unchanged")}
    if judged != {s: counts[s] for s in judged}:
        notes.append(
            "another writer changed this collection during the job: per-document statuses were read "
            "just before the write, the counts are the write's own"
        )
    return JobOutcome("succeeded", failures + results, counts, notes=notes, timings=timings)
