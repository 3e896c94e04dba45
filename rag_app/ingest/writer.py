"""The write half of an ingest: chunk -> embed (``embed_batch_size`` at a time) -> staged rows -> commit.

Memory stays bounded however large a document is. Chunks are produced and embedded as a stream, and
each embedded batch's Arrow rows go straight to a staging file on disk (:class:`RowSpill`, an Arrow
IPC stream under ``data_dir/tmp``) instead of a list in memory. A commit then hands LanceDB a
``RecordBatchReader`` over that file, which ``merge_insert`` consumes batch by batch: at any moment
ingest holds one embed batch of chunks and one batch of rows, not a document's worth.

Commits fall on document boundaries only, so a large document is still ONE ``merge_insert`` (one
table version) and a crash leaves every document wholly old or wholly new. The staging file is an
unlinked temporary file: a crash leaves nothing behind to clean up.

The two steps every engine cuts and embeds with (:func:`chunk_document`, :func:`embed_rows`) live here,
below :mod:`rag_app.ingest.pipeline` (which re-exports them), so the single-process writer and the Ray
engine's embedding actors (:mod:`rag_app.ingest.engines`) give a document the same chunks and rows.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
from tqdm.auto import tqdm

from rag_app.core.hardware import release_freed_memory
from rag_app.core.settings import Settings
from rag_app.core.types import Chunk, Document
from rag_app.ingest.chunking import embedding_text, iter_chunks
from rag_app.models.embeddings import Embedder
from rag_app.store.schema import chunks_to_table
from rag_app.store.vector_store import VectorStore

if TYPE_CHECKING:
    from rag_app.ingest.pipeline import IngestReport

log = logging.getLogger("rag_app.ingest.pipeline")  # the CLI turns this logger up for progress lines

#: Chunk rows after which a commit is made at the next document boundary (bounds what a crash redoes).
COMMIT_ROWS = 20_000


def chunk_document(
    settings: Settings, doc: Document, *, site: str, collection: str, embedder: Embedder, fingerprint: str
) -> Iterator[Chunk]:
    """``doc``'s chunks as the settings cut them, counted with ``embedder``'s tokenizer (a stream)."""
    return iter_chunks(
        doc,
        site=site,
        collection=collection,
        tokenizer=embedder,
        chunk_tokens=settings.chunk_tokens,
        overlap=settings.chunk_overlap,
        max_input_tokens=embedder.max_tokens,
        fingerprint=fingerprint,
    )


def embed_rows(embedder: Embedder, chunks: Sequence[Chunk], schema: pa.Schema) -> pa.Table:
    """Embed ``chunks`` (header + body, what the full-text index sees too) into rows of ``schema``."""
    texts = [embedding_text(c) for c in chunks]
    return chunks_to_table(chunks, texts, embedder.embed_documents(texts), schema)


@dataclass(frozen=True)
class WriteJob:
    """What the write step of an ingest is given, under the collection's writer lock, whichever engine
    writes: :func:`rag_app.ingest.pipeline.ingest_documents` diffs and prunes the same way for both and
    hands the pending documents, with this, to :func:`write_streamed` or to the Ray engine's writer."""

    settings: Settings
    store: VectorStore
    table: Any
    embedder: Embedder
    fingerprint: str
    report: IngestReport
    #: Document id -> content hash of what the table holds now (a document in it is an update).
    existing: Mapping[str, str]
    progress: bool
    #: Documents per commit (per actor call on Ray).
    batch_docs: int
    on_batch: Callable[[int], None] | None = None


#: An engine's write step: chunk, embed and commit ``pending`` into ``job.table``; the ids written.
WritePending = Callable[[WriteJob, Sequence[Document]], list[str]]


def write_streamed(job: WriteJob, pending: Sequence[Document]) -> list[str]:
    """The single-process write step: ``pending`` through a :class:`StreamWriter`; the ids written."""
    StreamWriter(job).write(pending)
    return [doc.id for doc in pending]


class RowSpill:
    """Arrow rows of the commit being built, staged in an unlinked temporary file on disk.

    ``write`` appends a batch and drops it from memory; ``reader`` streams the batches back, one at
    a time, for the commit; ``reset`` empties the file for the next commit.
    """

    def __init__(self, file: IO[bytes], schema: pa.Schema) -> None:
        self.file = file
        self.schema = schema
        self.sink: pa.ipc.RecordBatchStreamWriter | None = None
        self.rows = 0

    def write(self, rows: pa.Table) -> None:
        if self.sink is None:
            self.sink = pa.ipc.new_stream(self.file, self.schema)
        self.sink.write_table(rows)
        self.rows += rows.num_rows

    def reader(self) -> pa.RecordBatchReader:
        """The staged rows as a stream (read from disk batch by batch as the consumer pulls)."""
        if self.sink is None:
            return pa.RecordBatchReader.from_batches(self.schema, iter(()))
        self.sink.close()
        self.sink = None
        self.file.flush()
        self.file.seek(0)
        return pa.RecordBatchReader.from_batches(self.schema, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        with pa.ipc.open_stream(pa.PythonFile(self.file, mode="r")) as stream:
            yield from stream

    def reset(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        self.file.seek(0)
        self.file.truncate()
        self.rows = 0

    @classmethod
    @contextmanager
    def staged(cls, directory: Path, schema: pa.Schema) -> Iterator[RowSpill]:
        """A spill over a new unlinked temporary file in ``directory``, closed (and gone) on exit."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, prefix="ingest-", suffix=".arrows") as file:
            spill = cls(file, schema)
            try:
                yield spill
            finally:
                if spill.sink is not None:
                    spill.sink.close()


class StreamWriter:
    """Chunk -> embed (``embed_batch_size`` at a time) -> staged rows -> commit at document boundaries."""

    def __init__(self, job: WriteJob) -> None:
        self.job = job
        self.settings, self.table, self.report = job.settings, job.table, job.report
        self.buffer: list[Chunk] = []
        self.doc_ids: list[str] = []
        self.batches = 0

    def write(self, pending: Sequence[Document]) -> None:
        meter = _Meter(
            f"ingest {self.report.site}/{self.report.collection}",
            len(pending),
            self.settings.ingest_log_every_chunks,
            terminal=self.job.progress,
        )
        try:
            with RowSpill.staged(self.settings.data_dir / "tmp", self.table.schema) as spill:
                for doc in pending:
                    for chunk in chunk_document(
                        self.settings,
                        doc,
                        site=self.report.site,
                        collection=self.report.collection,
                        embedder=self.job.embedder,
                        fingerprint=self.job.fingerprint,
                    ):
                        self.buffer.append(chunk)
                        if len(self.buffer) >= self.settings.embed_batch_size:
                            meter.chunks(self._embed(spill))
                    self.doc_ids.append(doc.id)
                    meter.document()
                    full = spill.rows + len(self.buffer) >= COMMIT_ROWS
                    if len(self.doc_ids) >= self.job.batch_docs or full:
                        meter.chunks(self._embed(spill))
                        self._commit(spill)
                meter.chunks(self._embed(spill))
                self._commit(spill)
        finally:
            meter.close()

    def _embed(self, spill: RowSpill) -> int:
        if not self.buffer:
            return 0
        chunks, self.buffer = self.buffer, []
        spill.write(embed_rows(self.job.embedder, chunks, self.table.schema))
        return len(chunks)

    def _commit(self, spill: RowSpill) -> None:
        if not self.doc_ids:
            return
        # A commit of documents the table does not hold is an append, not a merge.
        all_new = not any(doc_id in self.job.existing for doc_id in self.doc_ids)
        self.job.store.replace_documents(self.table, spill.reader(), self.doc_ids, all_new=all_new)
        release_freed_memory()  # what the commit's threads freed, before the next batch is embedded
        self.report.chunks_written += spill.rows
        spill.reset()
        self.doc_ids = []
        self.batches += 1
        if self.job.on_batch:
            self.job.on_batch(self.batches)


class _Meter:
    """Progress: a tqdm bar on a terminal, else a log line every ``every`` chunks (CI, cron, pipes)."""

    def __init__(self, label: str, documents: int, every: int, *, terminal: bool) -> None:
        self.label, self.documents, self.every, self.terminal = label, documents, max(1, every), terminal
        self.done_docs = 0
        self.done_chunks = 0
        self.next_log = self.every
        self.start = time.perf_counter()
        self.bar = tqdm(total=documents, unit="doc", desc=label, disable=not terminal, leave=False)

    def chunks(self, n: int) -> None:
        if not n:
            return
        self.done_chunks += n
        if self.terminal:
            self.bar.set_postfix(chunks=self.done_chunks)
        elif self.done_chunks >= self.next_log:
            rate = self.done_chunks / max(time.perf_counter() - self.start, 1e-9)
            log.info(
                "%s: %d chunks embedded, %d/%d documents done (%.1f chunks/s)",
                self.label,
                self.done_chunks,
                self.done_docs,
                self.documents,
                rate,
            )
            while self.next_log <= self.done_chunks:
                self.next_log += self.every

    def document(self) -> None:
        self.done_docs += 1
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
