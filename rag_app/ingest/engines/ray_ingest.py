"""``rag-app ingest --engine ray``: the ingest of :mod:`rag_app.ingest.pipeline` as a Ray Data pipeline.

Same contract as the single-process engine (same :class:`IngestReport`, same rows, interchangeable:
a collection written by one is found unchanged by the other), different execution:

1. **scan** (Ray tasks): every file is parsed and each document's id and content hash sent back.
   Before anything is written the driver applies the loader's rules (the first malformed record
   stops the run under ``on_error="stop"``, duplicate ids, the size limit) and, holding the
   collection's writer lock, diffs the hashes with the table's: unchanged documents cost nothing
   more, ``--prune`` and ``--dry-run`` work as they do locally. A re-run with nothing to do starts
   no embedding actor and commits nothing.
2. **load** (Ray tasks): the files with pending documents are parsed again where they are embedded
   (only ids and hashes went to the driver), a large file split over several tasks.
3. **embed** (``settings.ray_embed_actors`` actors, each loading the model once): chunk, embed and
   write the new documents' rows as Lance fragments, straight to the table's storage.
4. **commit** (the driver): one Append of fragments per ``settings.ray_commit_documents`` documents;
   changed documents replaced by merge; then the indexes and the document table, once.

What a cluster changes: the scan, load and embed stages run on every node (set
``RAG_RAY_EMBED_ACTORS`` to the number of model copies the cluster holds), fragments are written in
parallel to the shared database, and the input paths must be absolute paths every node can read. The
commits stay on the driver: they are metadata-only and serialised by the collection's writer lock, so
they are not the bottleneck. The database must be on object storage (``RAG_DB_URI``): with a local
path, actors on other nodes would write their fragments to their own disks and the driver would commit
files it does not have, a broken table; so a cluster with a local database is refused before Ray is
contacted (:func:`check_cluster_storage`), and each actor checks it can open the table before writing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rag_app.core.errors import InputError, LoaderError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.engines.ray_commit import FragmentCommitter
from rag_app.ingest.engines.ray_plan import PendingFile, Scan, plan_files, read_scan
from rag_app.ingest.engines.ray_session import ray_session
from rag_app.ingest.engines.ray_stages import EmbedActor, document_rows, load_pending, scan_files
from rag_app.ingest.loaders import OnError
from rag_app.ingest.loaders import expand_paths as expand_path
from rag_app.ingest.pipeline import (
    DEFAULT_BATCH_DOCS,
    IngestReport,
    WriteJob,
    chunk_fingerprint,
    ingest_documents,
    locked_ingest,
)
from rag_app.models.embeddings import Embedder, load_embedder
from rag_app.store.vector_store import VectorStore

#: Load tasks per embedding actor a large file is split into (each parses the file, keeps its share).
SPLITS_PER_ACTOR = 4


def ray_ingest_paths(
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
    """:func:`rag_app.ingest.pipeline.ingest_paths` on Ray (see the module docstring).

    ``embedder``: the driver's embedder (the runtime's); it guards the table and makes the hashes'
    fingerprint. The actors load their own from ``settings`` and refuse to run if it differs.
    ``batch_docs``: documents per actor call (one fragment each); commits group
    ``settings.ray_commit_documents`` documents.
    """
    start = time.perf_counter()
    check_cluster_storage(settings)
    store = VectorStore(settings)
    store.check_site(site, collection)
    files = list_files(paths, remote=bool(settings.ray_address))
    embedder = embedder or load_embedder(settings)
    fingerprint = chunk_fingerprint(settings, embedder)
    report = IngestReport(site, collection, dry_run=dry_run, files=len(files))
    options = {"on_error": on_error, "csv_columns": csv_columns, "max_bytes": settings.max_document_bytes}
    with ray_session(settings, progress=progress) as ray:
        scan = _scan(ray, files, options | {"fingerprint": fingerprint})
        report.skipped = scan.skipped
        locked_ingest(
            settings,
            store,
            embedder,
            report,
            plan=lambda existing: (
                plan_files(scan, files, existing, report),
                {d.doc_id for d in scan.documents if d.doc_hash is not None},
            ),
            write=lambda job, pending: _write_files(ray, job, pending, options),
            prune=prune,
            force=force,
            progress=progress,
            batch_docs=batch_docs,
        )
    report.seconds = time.perf_counter() - start
    return report


def ray_ingest_documents(
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
) -> IngestReport:
    """:func:`rag_app.ingest.pipeline.ingest_documents` on Ray: documents already loaded (a source's
    items, an upload) are diffed, pruned and finished by ``ingest_documents`` itself; only the write
    step differs (:func:`write_documents`: the pending ones shipped to the embedding actors)."""
    check_cluster_storage(settings)
    return ingest_documents(
        settings,
        site,
        collection,
        documents,
        prune=prune,
        force=force,
        dry_run=dry_run,
        progress=progress,
        batch_docs=batch_docs,
        store=store,
        embedder=embedder,
        on_batch=on_batch,
        keep_ids=keep_ids,
        write=write_documents,
    )


def check_cluster_storage(settings: Settings) -> None:
    """Refuse a Ray cluster (``ray_address``) with a database on a local path, before Ray is contacted.

    The embedding actors write Lance fragments where the table is, on whichever node they run, and
    the driver commits them: with a local path, the fragments of actors on other nodes land on those
    nodes' disks and the commit names files the table does not have, which breaks it for every reader.
    Object storage is the same place from every node.
    """
    if settings.ray_address and not settings.db_is_remote:
        raise InputError(
            f"--engine ray on a Ray cluster (RAG_RAY_ADDRESS is set) needs the database on object storage, "
            f"but it is at {settings.db_location}, a path on this machine: actors on other nodes would "
            "write their fragments to their own disks and the commit would name files this machine does "
            "not have. Set RAG_DB_URI to object storage (s3://, gs://, az://, with RAG_STORAGE_OPTIONS) "
            "reachable from every node, or unset RAG_RAY_ADDRESS to run Ray on this machine"
        )


def write_documents(job: WriteJob, pending: Sequence[Document]) -> list[str]:
    """The Ray write step of documents already in memory: each pending one (with whether it replaces an
    older version) pickled into the embedding actors' input; no Ray session when nothing is pending."""
    if not pending:
        return []
    with ray_session(job.settings, progress=job.progress) as ray:
        rows = ray.data.from_items(document_rows([(doc, doc.id in job.existing) for doc in pending]))
        return _embed_and_commit(ray, rows, job, len(pending))


def list_files(paths: Sequence[Path | str], *, remote: bool) -> list[tuple[Path, Path]]:
    """``(file, root)`` pairs in the order the local loader reads them (ids are paths under root).

    ``remote``: on a Ray cluster relative paths would be read from each worker's own directory, so
    they are refused."""
    files: list[tuple[Path, Path]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LoaderError(path, "no such file or directory")
        if remote and not path.is_absolute():
            raise InputError(
                f"{path}: with RAG_RAY_ADDRESS (a Ray cluster) pass absolute paths on a filesystem every "
                "node mounts; a relative path would be read from each worker's own directory"
            )
        files += expand_path(path)
    return files


def _scan(ray: ModuleType, files: Sequence[tuple[Path, Path]], options: dict[str, Any]) -> Scan:
    """Every file parsed by Ray tasks, the rows read back under the loader's rules (raises as it does)."""
    rows: list[dict[str, Any]] = []
    if files:
        items = [{"file_index": i, "path": str(f), "root": str(r)} for i, (f, r) in enumerate(files)]
        scanned = ray.data.from_items(items).map_batches(
            scan_files, batch_size=16, batch_format="pyarrow", fn_kwargs=options
        )
        rows = _collect(scanned)
    return read_scan(rows, files, options["on_error"])


def _split(pending: Sequence[PendingFile], actors: int, batch_docs: int) -> list[PendingFile]:
    """Pieces of the pending files, so one large file (a JSONL corpus) is loaded and embedded by
    several actors: about :data:`SPLITS_PER_ACTOR` pieces per actor, never under ``batch_docs``
    documents (each piece parses its whole file again: a cost worth paying only for that much)."""
    pieces: list[PendingFile] = []
    for entry in pending:
        size = max(batch_docs, math.ceil(len(entry.doc_ids) / (SPLITS_PER_ACTOR * actors)))
        for i in range(0, len(entry.doc_ids), size):
            part = slice(i, i + size)
            pieces.append(
                PendingFile(
                    entry.path, entry.root, entry.positions[part], entry.doc_ids[part], entry.updates[part]
                )
            )
    return pieces


def _write_files(
    ray: ModuleType, job: WriteJob, pending: Sequence[PendingFile], options: dict[str, Any]
) -> list[str]:
    """The Ray write step of files: the pending documents loaded again on the workers (a large file in
    several pieces), then embedded and committed; the ids written."""
    if not pending:
        return []
    items = [piece.item() for piece in _split(pending, job.settings.ray_embed_actors, job.batch_docs)]
    documents = ray.data.from_items(items).map_batches(
        load_pending, batch_size=1, batch_format="pyarrow", fn_kwargs=options
    )
    return _embed_and_commit(ray, documents, job, sum(len(p.doc_ids) for p in pending))


def _embed_and_commit(ray: ModuleType, documents: Any, job: WriteJob, total: int) -> list[str]:
    """Run ``documents`` (a dataset of :data:`~.ray_stages.DOC_SCHEMA` rows) through the embedding
    actors and commit their results; returns the ids written."""
    settings, table, embedder = job.settings, job.table, job.embedder
    results = documents.map_batches(
        EmbedActor,
        batch_size=job.batch_docs,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=settings.ray_embed_actors),
        num_gpus=settings.ray_embed_gpus or None,
        fn_constructor_kwargs={
            "settings": settings,
            "site": job.report.site,
            "collection": job.report.collection,
            "identity": (embedder.model_id, embedder.dimension, embedder.max_tokens),
            "fingerprint": job.fingerprint,
            "table_uri": table.uri,
            "schema": table.schema,
        },
    )
    committer = FragmentCommitter(
        job.store,
        table,
        job.report,
        every=settings.ray_commit_documents,
        storage_options=dict(settings.storage_options) or None,
        total=total,
        on_batch=job.on_batch,
    )
    for result in _iter_rows(results):
        committer.add(result)
    committer.flush()
    return committer.written


def _iter_rows(dataset: Any) -> Any:
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()


def _collect(dataset: Any) -> list[dict[str, Any]]:
    return list(_iter_rows(dataset))
