"""Bring collections up to date from their declared sources (``rag-app sync``, ``ingest --url/--s3``).

Per collection, in three steps, so every guarantee of file ingest holds for fetched content too:

1. **Read** every source (:mod:`rag_app.ingest.sources`) and parse what changed: items the last
   committed run remembered as unchanged (a 304, the same ETag or ``<lastmod>``) are neither
   downloaded nor parsed, but their documents count as present. Nothing is written yet, so a parse
   error under ``on_error="stop"`` leaves the collection untouched.
2. **Write** each source's documents with :func:`~rag_app.ingest.pipeline.ingest_documents`
   (content-hash diff: unchanged costs nothing, changed replaces its chunks; commits on document
   boundaries), then remember the source's validators. Validators are saved only after the commit
   returned, so a crash leaves uncommitted items unremembered and the next run fetches them again.
3. **Prune** (when a source of the collection asks for it) what no source has any more: pages that
   answered 404/410, objects and files that are gone. Items that failed transiently (a timeout, a
   503, robots.txt unreachable) keep their documents; a source that could not be listed at all
   (its sitemap or bucket listing failed) disables the prune for the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rag_app.core.errors import InputError, LoaderError, RagError
from rag_app.core.settings import Settings, SourceSpec
from rag_app.core.types import Document
from rag_app.ingest.loaders import OnError
from rag_app.ingest.pipeline import (
    PruneRefusedError,
    check_document_size,
    chunk_fingerprint,
    ingest_documents,
)
from rag_app.ingest.sources import build_sources
from rag_app.ingest.sources.base import (
    Failure,
    Known,
    Skipped,
    Source,
    SourceError,
    SourceEvent,
    SourceItem,
    Unchanged,
    Validators,
)
from rag_app.ingest.sources.parse import parse_item
from rag_app.ingest.sources.report import CollectionReport, SourceReport, SyncReport
from rag_app.ingest.sources.state import SourceState, state_path
from rag_app.models.embeddings import Embedder, load_embedder
from rag_app.store.vector_store import VectorStore


@dataclass
class _Read:
    """One source's read: documents to write, what to remember once they are committed, and the ids
    of documents present though not re-read (kept by a prune)."""

    spec: SourceSpec
    source: Source
    report: SourceReport
    documents: list[Document] = field(default_factory=list)
    entries: dict[str, Known] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)


def sync(
    settings: Settings,
    specs: Sequence[SourceSpec] | None = None,
    *,
    site: str | None = None,
    collection: str | None = None,
    embedder_for: Callable[[str], Embedder] | None = None,
    **options: Any,
) -> SyncReport:
    """Sync every collection that ``specs`` (default: ``settings.sources``) declare sources for,
    narrowed to ``site``/``collection``. A collection that fails as a whole (a refused prune, another
    embedder's table, a busy writer lock) is reported and the others still run. ``embedder_for(site)``:
    the embedder a site's tables are written with (the runtime's; default: the configured one).
    ``options`` are :func:`sync_collection`'s."""
    specs = list(settings.sources if specs is None else specs)
    if site is not None:
        settings.collections_for(site, collection)
    elif collection is not None:
        raise InputError("--collection needs --site")
    chosen = [s for s in specs if site in (None, s.site) and collection in (None, s.collection)]
    if not chosen:
        where = f" for {site}{'/' + collection if collection else ''}" if site else ""
        raise InputError(
            f"no sources declared{where}: add [[sources]] tables (site, collection, kind, location) "
            "to rag.toml, or pass --config FILE"
        )
    groups: dict[tuple[str, str], list[SourceSpec]] = {}
    for spec in chosen:
        groups.setdefault((spec.site, spec.collection), []).append(spec)
    if embedder_for is None:
        shared = load_embedder(settings)
        embedder_for = lambda _site: shared  # noqa: E731
    report = SyncReport(dry_run=bool(options.get("dry_run")))
    for (group_site, group_collection), group in groups.items():
        try:
            done = sync_collection(
                settings, group_site, group_collection, group, embedder=embedder_for(group_site), **options
            )
        except RagError as exc:
            done = CollectionReport(group_site, group_collection, dry_run=report.dry_run, error=str(exc))
        report.collections.append(done)
    return report


def sync_collection(
    settings: Settings,
    site: str,
    collection: str,
    specs: Sequence[SourceSpec],
    *,
    embedder: Embedder | None = None,
    force: bool = False,
    dry_run: bool = False,
    on_error: OnError = "skip",
    csv_columns: dict[str, str] | None = None,
    progress: bool = False,
    s3_client: Any = None,
) -> CollectionReport:
    """Read, write and (if any spec asks) prune one collection from ``specs``; see the module doc.

    ``on_error="stop"``: a file that cannot be parsed, or a folder walk problem (unreadable file,
    symlink loop), raises before anything is written. Network failures never stop a run: they are
    per-URL entries of the report.
    """
    start = time.perf_counter()
    store = VectorStore(settings)
    store.check_site(site, collection)
    embedder = embedder or load_embedder(settings)
    state = SourceState.load(state_path(settings, site, collection), chunk_fingerprint(settings, embedder))
    table = store.open_table(site, collection)
    existing = set(store.doc_hashes(table)) if table is not None else set()
    owners = {d: known.source for known in state.items.values() for d in known.doc_ids}
    report = CollectionReport(site, collection, dry_run=dry_run)
    reads: list[_Read] = []
    seen: dict[str, str] = {}
    known = state.known(existing)
    for spec in specs:
        for source in build_sources(settings, spec, s3_client=s3_client):
            read = _Read(spec, source, SourceReport(spec.kind, source.key.split(":", 1)[1]))
            report.sources.append(read.report)
            reads.append(read)
            try:
                for event in source.scan(known):
                    read.seen.add(event.uri)
                    _take(event, read, state, seen, settings, on_error, csv_columns)
            except SourceError as exc:
                read.report.error = str(exc)
            else:  # a complete listing: what it no longer lists is forgotten
                read.dropped += [
                    u for u, k in state.items.items() if k.source == source.key and u not in read.seen
                ]
    for read in reads:  # every source is read before the first write (stop leaves all untouched)
        _write(read, settings, site, collection, store, embedder, state, force, dry_run, progress)
    if any(spec.prune for spec in specs):
        _prune(report, reads, settings, store, embedder, state, owners, force, dry_run)
    report.seconds = time.perf_counter() - start
    return report


def _take(
    event: SourceEvent,
    read: _Read,
    state: SourceState,
    seen: dict[str, str],
    settings: Settings,
    on_error: OnError,
    csv_columns: dict[str, str] | None,
) -> None:
    """Account for one event of ``read``'s source: parse an item, keep an unchanged one's ids."""
    out = read.report
    before = state.items.get(event.uri)
    if isinstance(event, Unchanged):
        out.unchanged += 1
        ids = before.doc_ids if before is not None else ()
        read.keep.update(ids)
        out.unchanged_documents += len(ids)
        newer = event.validators or (before.validators if before is not None else None)
        if (
            before is not None
            and newer is not None
            and (newer, read.source.key) != (before.validators, before.source)
        ):
            read.entries[event.uri] = Known(newer, ids, read.source.key)
        return
    if isinstance(event, Skipped):
        out.skipped.append({"uri": event.uri, "reason": event.reason})
        read.dropped.append(event.uri)
        return
    if isinstance(event, Failure):
        if read.spec.kind == "folder" and on_error == "stop":
            raise LoaderError(event.uri, event.reason + " (pass --on-error skip to report it and go on)")
        out.fail(event.uri, event.reason, event.status)
        if event.redirects:
            out.redirects.append({"url": event.uri, "to": event.redirects[-1]})
        if event.gone:
            read.dropped.append(event.uri)
        elif before is not None:  # transient: what it produced before stays
            read.keep.update(before.doc_ids)
        return
    _take_item(event, read, before, seen, settings, on_error, csv_columns)


def _take_item(
    item: SourceItem,
    read: _Read,
    before: Known | None,
    seen: dict[str, str],
    settings: Settings,
    on_error: OnError,
    csv_columns: dict[str, str] | None,
) -> None:
    out = read.report
    out.fetched += 1
    if item.redirects:
        out.redirects.append({"url": item.uri, "to": item.source})
    docs, errors = parse_item(
        item, max_bytes=settings.max_document_bytes, on_error=on_error, csv_columns=csv_columns
    )
    problems = [str(e) for e in errors]
    kept: list[Document] = []
    for doc in docs:
        try:
            check_document_size(doc, settings.max_document_bytes)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if doc.id in seen:
            problems.append(f"duplicate document id {doc.id!r} (first read from {seen[doc.id]}); left out")
            continue
        seen[doc.id] = item.uri
        kept.append(doc)
    for problem in problems:
        out.fail(item.uri, problem)
    if not kept and problems:  # nothing usable: what it produced before stays, fetched again next run
        if before is not None:
            read.keep.update(before.doc_ids)
        return
    read.documents.extend(kept)
    # A partly failed item is not remembered as validated: the next run reads it again.
    validators = Validators() if problems else item.validators
    read.entries[item.uri] = Known(validators, tuple(d.id for d in kept), read.source.key)


def _write(
    read: _Read,
    settings: Settings,
    site: str,
    collection: str,
    store: VectorStore,
    embedder: Embedder,
    state: SourceState,
    force: bool,
    dry_run: bool,
    progress: bool,
) -> None:
    """Commit one source's documents, then (not on a dry run) remember its validators."""
    out = read.report
    if read.documents:
        done = ingest_documents(
            settings,
            site,
            collection,
            read.documents,
            force=force,
            dry_run=dry_run,
            progress=progress,
            store=store,
            embedder=embedder,
        )
        out.added, out.updated, out.chunks_written = done.added, done.updated, done.chunks_written
        out.unchanged_documents += done.unchanged
    if dry_run or not (read.entries or read.dropped):
        return
    with store.writer(site, collection):  # one state writer at a time, like the table
        state.update(read.entries, read.dropped)
        state.save()


def _prune(
    report: CollectionReport,
    reads: list[_Read],
    settings: Settings,
    store: VectorStore,
    embedder: Embedder,
    state: SourceState,
    owners: dict[str, str],
    force: bool,
    dry_run: bool,
) -> None:
    """Remove what no source has any more (keeping every id a source still has or failed to re-read)."""
    unread = [r.report.location for r in reads if r.report.error]
    if unread:
        report.prune_note = f"not pruned: {', '.join(unread)} could not be read this run"
        return
    keep: set[str] = set()
    for read in reads:
        keep.update(d.id for d in read.documents)
        keep.update(read.keep)
        if not read.spec.prune:  # a source that does not prune keeps everything it ever produced
            keep.update(state.owned_ids(read.source.key))
    try:
        done = ingest_documents(
            settings,
            report.site,
            report.collection,
            [],
            prune=True,
            keep_ids=keep,
            force=force,
            dry_run=dry_run,
            progress=False,
            store=store,
            embedder=embedder,
        )
    except PruneRefusedError as exc:
        report.error = f"prune refused (the sources' content was updated): {exc}"
        return
    report.pruned = True
    report.removed_ids = done.removed_ids
    by_key = {r.source.key: r.report for r in reads}
    for doc_id in done.removed_ids:
        owner = by_key.get(owners.get(doc_id, ""))
        if owner is not None:
            owner.removed += 1


__all__ = ["sync", "sync_collection"]
