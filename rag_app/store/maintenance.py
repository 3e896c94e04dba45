"""``rag-app maintain``: upkeep of every chunk table and document table, safe beside readers and writers.

:func:`maintain` runs :func:`rag_app.store.upkeep.optimize_table` (compact fragments, fold new rows into
the vector and full-text indexes, remove versions superseded more than the retention ago) on each
collection's chunk table and its document table. What is safe while it runs:

- Writers on this host: it holds each collection's writer lock (:mod:`rag_app.store.locks`) around
  both tables, so it never interleaves with an ingest's read-compare-write (it waits for the ingest,
  up to ``ingest_lock_timeout_s``, and the ingest waits for it).
- Readers (this process, other processes, replicas on shared object storage): compaction and index
  folding commit new versions; a reader still on an older version keeps reading its files, which stay
  until that version has been superseded for the retention. Keep the retention above
  ``read_consistency_s`` plus the slowest query; :func:`maintain` refuses one below
  ``read_consistency_s``.
- Writers on other hosts: see :mod:`rag_app.store.upkeep` (a lost compaction race is retried) and
  :mod:`rag_app.store.locks` (what the lock does not cover).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.store.doc_index import doc_table_name
from rag_app.store.schema import table_name
from rag_app.store.upkeep import TableUpkeep, optimize_table

if TYPE_CHECKING:
    from rag_app.store.vector_store import VectorStore


def maintenance_targets(
    settings: Settings, site: str | None, collection: str | None
) -> list[tuple[str, str]]:
    """``(site, collection)`` pairs to maintain: every configured one, one site's, or one collection."""
    if collection and not site:
        raise InputError("--collection needs --site")
    sites = [site] if site else list(settings.sites)
    return [(s, c) for s in sites for c in settings.collections_for(s, collection)]


def maintain(
    store: VectorStore, targets: Sequence[tuple[str, str]], *, retention_s: float | None = None
) -> list[TableUpkeep]:
    """:func:`optimize_table` on each target's chunk table and document table, under its writer lock.

    ``retention_s``: how long a superseded version is kept (default ``settings.maintain_retention_s``);
    refused below ``read_consistency_s``, since a reader may still be on such a version.
    """
    settings = store.settings
    retention = settings.maintain_retention_s if retention_s is None else retention_s
    if retention < 0:
        raise InputError(f"retention must be 0 or more seconds, got {retention:g}")
    if retention < settings.read_consistency_s:
        raise InputError(
            f"retention {retention:g}s is shorter than RAG_READ_CONSISTENCY_S "
            f"({settings.read_consistency_s:g}s): a reader may still be on a version that old; keep it "
            "above the read consistency interval plus the slowest query (--retention-s)"
        )
    done: list[TableUpkeep] = []
    for site, collection in targets:
        chunks = table_name(site, collection)
        with store.writer(site, collection):
            for name in (chunks, doc_table_name(chunks)):
                table = store.db.get(name)
                if table is not None:
                    done.append(optimize_table(table, retention_s=retention))
    return done
