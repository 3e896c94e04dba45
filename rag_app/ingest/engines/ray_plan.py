"""The driver's reading of a Ray scan: the same errors, duplicate checks and diff as the local engine.

The workers scan files in parallel and in any order; this module puts their rows back in the order
:func:`rag_app.ingest.loaders.load_paths` reads files (paths as given, folders sorted) and applies its
rules to them: the first loader error stops the run under ``on_error="stop"`` (else it is reported
as skipped), a document id seen twice is an error (else the later one is skipped), a document over
the size limit stops the run. Then the diff against the table's hashes (under the writer lock) says,
per file, which documents to write and whether each one replaces an older version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError, LoaderError
from rag_app.ingest.loaders import OnError
from rag_app.ingest.pipeline import IngestReport, count_document


@dataclass(frozen=True)
class ScannedDocument:
    """One document a scan found: where it is (file and position in it), its id, and its content
    hash (None when it has no text: never written)."""

    file_index: int
    position: int
    doc_id: str
    doc_hash: str | None


@dataclass
class Scan:
    """The documents to consider, in load order, and the records skipped under ``on_error="skip"``."""

    documents: list[ScannedDocument] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class PendingFile:
    """A file holding documents to write: their positions in it, ids, and whether each is an update."""

    path: Path
    root: Path
    positions: list[int] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    updates: list[bool] = field(default_factory=list)

    def item(self) -> dict[str, Any]:
        """The row the load stage gets for this file."""
        return {
            "path": str(self.path),
            "root": str(self.root),
            "positions": self.positions,
            "doc_ids": self.doc_ids,
            "updates": self.updates,
        }


def read_scan(rows: Sequence[dict[str, Any]], files: Sequence[tuple[Path, Path]], on_error: OnError) -> Scan:
    """Apply the loader's rules to the scan rows of ``files`` (``(file, root)`` in load order)."""
    scan = Scan()
    seen: dict[str, str] = {}
    too_large: str | None = None
    # a file's own errors come first (the loader reports them while reading it), then its documents
    ordered = sorted(rows, key=lambda r: (r["file_index"], r["kind"] != "error", r["position"]))
    for row in ordered:
        if row["kind"] == "error":
            err = LoaderError(row["path"], row["reason"], None if row["line"] < 0 else row["line"])
            if on_error == "stop":
                raise err
            scan.skipped.append(str(err))
            continue
        file = files[row["file_index"]][0]
        doc_id = row["doc_id"]
        if doc_id in seen:
            err = LoaderError(file, f"duplicate document id {doc_id!r} (first seen in {seen[doc_id]})")
            if on_error == "stop":
                raise err
            scan.skipped.append(str(err))
            continue
        seen[doc_id] = str(file)
        if row["kind"] == "too_large":
            too_large = too_large or row["reason"]
            continue
        doc_hash = row["doc_hash"] or None
        scan.documents.append(ScannedDocument(row["file_index"], row["position"], doc_id, doc_hash))
    if too_large is not None:  # checked after loading, as the local engine does, before any write
        raise InputError(too_large)
    return scan


def plan_files(
    scan: Scan, files: Sequence[tuple[Path, Path]], existing: dict[str, str], report: IngestReport
) -> list[PendingFile]:
    """Count every scanned document on ``report`` and group those to write by file (load order)."""
    pending: dict[int, PendingFile] = {}
    for doc in scan.documents:
        if not count_document(report, existing, doc.doc_id, doc.doc_hash):
            continue
        path, root = files[doc.file_index]
        entry = pending.setdefault(doc.file_index, PendingFile(path, root))
        entry.positions.append(doc.position)
        entry.doc_ids.append(doc.doc_id)
        entry.updates.append(doc.doc_id in existing)
    return [pending[i] for i in sorted(pending)]
