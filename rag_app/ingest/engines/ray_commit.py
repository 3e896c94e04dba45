"""The driver's half of a Ray ingest: commits, one per ``ray_commit_documents`` documents.

Workers write the new documents' rows as Lance fragments, which no reader sees until a commit names
them. The driver gathers the fragments of finished batches and commits them as one ``Append`` per
``ray_commit_documents`` documents, from the table version it last saw under the writer lock (Lance
checks the commit against anything newer). A batch's documents are whole in its fragments, so every
commit falls on document boundaries, as the local engine's do: a crash leaves each document wholly
written or absent, and the next run writes what is missing. A crash's uncommitted fragments are
files no version references; Lance's version cleanup (``rag-app maintain``) removes them once they
are a week old (younger ones could belong to a write in progress).

Documents already in the table (changed since) come back as rows and replace their old chunks
through :meth:`VectorStore.replace_documents`: one merge, atomic per document, as in the local engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from rag_app.core.hardware import release_freed_memory
from rag_app.ingest.engines.ray_stages import raise_worker_error
from rag_app.ingest.pipeline import IngestReport
from rag_app.store.vector_store import VectorStore

log = logging.getLogger("rag_app.ingest.pipeline")  # the CLI turns this logger up for progress lines


class FragmentCommitter:
    """Collects the embedding actors' results and commits them in batches of documents."""

    def __init__(
        self,
        store: VectorStore,
        table: Any,
        report: IngestReport,
        *,
        every: int,
        storage_options: dict[str, str] | None,
        total: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.store, self.table, self.report = store, table, report
        self.every, self.storage_options, self.total, self.on_batch = every, storage_options, total, on_batch
        self.uri: str = table.uri
        self.version: int = table.version
        self.fragments: list[str] = []
        self.new_ids: list[str] = []
        self.new_chunks = 0
        self.changed: list[pa.Table] = []
        self.changed_ids: list[str] = []
        self.written: list[str] = []
        self.batches = 0
        self.start = time.perf_counter()

    def add(self, result: dict[str, Any]) -> None:
        """One actor batch's result; commits once ``every`` documents are waiting."""
        if result["error"]:
            raise_worker_error(result["error_type"], result["error"])
        self.fragments += result["fragments"]
        self.new_ids += result["new_ids"]
        self.new_chunks += result["new_chunks"]
        if result["changed_ids"]:
            self.changed.append(pa.ipc.open_stream(result["changed_rows"]).read_all())
            self.changed_ids += result["changed_ids"]
        if len(self.new_ids) + len(self.changed_ids) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Commit what is waiting: the fragments as one Append, the changed documents as one merge."""
        if not self.new_ids and not self.changed_ids:
            return
        chunks = self.new_chunks
        if self.fragments:
            import lance
            from lance.fragment import FragmentMetadata

            fragments = [FragmentMetadata.from_json(f) for f in self.fragments]
            committed = lance.LanceDataset.commit(
                self.uri,
                lance.LanceOperation.Append(fragments),
                read_version=self.version,
                storage_options=self.storage_options,
            )
            self.version = committed.version
        self.table.checkout_latest()  # the table handle sees the Append (and each merge below reads it)
        if self.changed_ids:
            rows = pa.concat_tables(self.changed)
            chunks += rows.num_rows
            self.store.replace_documents(self.table, rows, self.changed_ids)
            self.version = self.table.version
        self.written += self.new_ids + self.changed_ids
        self.report.chunks_written += chunks
        self.fragments, self.new_ids, self.new_chunks = [], [], 0
        self.changed, self.changed_ids = [], []
        release_freed_memory()
        self.batches += 1
        rate = self.report.chunks_written / max(time.perf_counter() - self.start, 1e-9)
        log.info(
            "ingest %s/%s (ray): %d/%d documents committed, %d chunks (%.1f chunks/s)",
            self.report.site,
            self.report.collection,
            len(self.written),
            self.total,
            self.report.chunks_written,
            rate,
        )
        if self.on_batch:
            self.on_batch(self.batches)
