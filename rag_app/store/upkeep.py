"""One table's upkeep: compact small fragments, fold new rows into the indexes, remove superseded versions.

Why: every ingest commit adds fragments (a document's chunks are one commit), and rows written after
an index was built are searched by a flat scan beside it until they are folded in. Ingest tidies the
tables it wrote (:meth:`rag_app.store.vector_store.VectorStore.refresh_indexes` and the document
table's refresh call :func:`optimize_table`); ``rag-app maintain`` (:mod:`rag_app.store.maintenance`)
does it for every table on a schedule.

Which versions go: a version is removed once it stopped being the latest more than ``retention_s``
ago, not once it was *created* that long ago. A table written once a month has a month-old version
that was current until a second ago, and a replica may still be reading it; LanceDB's own
``optimize(cleanup_older_than=...)`` goes by creation time and would delete it, so the versions are
chosen here (:func:`superseded_versions`) and handed to Lance by number. Files of a write still in
progress are never removed (``delete_unverified`` stays off).

Another host's commit during a compaction (object storage shared by several writers): Lance commits
with a conditional put, so the compaction that loses the race is refused, nothing is lost, and it is
retried here up to :data:`COMPACT_ATTEMPTS` times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from rag_app.core.errors import RagError

#: Compactions tried per table when another writer's commit keeps winning the race.
COMPACT_ATTEMPTS = 3


class MaintenanceConflictError(RagError):
    """Another writer (on another host) kept committing while a table was being compacted."""

    exit_code = 7


@dataclass(frozen=True)
class TableUpkeep:
    """What one table's upkeep did."""

    table: str
    rows: int
    fragments_before: int
    fragments_after: int
    #: Versions the table had before, and how many of them were removed (superseded past retention).
    versions_before: int
    versions_removed: int
    #: Indexes that had unindexed rows, now folded in.
    indexes_folded: list[str] = field(default_factory=list)
    version: int = 0


def superseded_versions(versions: Sequence[dict[str, Any]], cutoff: float) -> list[int]:
    """Numbers of the versions that stopped being the latest at or before ``cutoff`` (epoch seconds).

    A version stops being the latest when the next one is committed; the latest is never returned.
    ``versions``: LanceDB's listing (``version``, ``timestamp``: a naive local or aware datetime).
    """
    ordered = sorted(versions, key=lambda v: v["version"])
    return [
        int(current["version"])
        for current, following in pairwise(ordered)
        if following["timestamp"].timestamp() <= cutoff
    ]


def optimize_table(table: Any, *, retention_s: float) -> TableUpkeep:
    """Compact ``table``'s fragments, fold new rows into its indexes, and remove the versions
    superseded more than ``retention_s`` ago.

    The caller holds the collection's writer lock. Works on the latest version whatever the handle's
    read consistency, and leaves the handle there.
    """
    table.checkout_latest()
    dataset = table.to_lance()
    versions = dataset.versions()
    old = superseded_versions(versions, time.time() - retention_s)
    fragments_before = len(dataset.get_fragments())
    stale = [
        index.name
        for index in table.list_indices()
        if (stats := table.index_stats(index.name)) is not None and stats.num_unindexed_rows > 0
    ]
    if stale:  # first: Lance compacts fragments an index covers apart from those it does not
        dataset.optimize.optimize_indices(index_names=stale)
    dataset = _compact(dataset, table.name)
    removed = 0
    if old:
        removed = dataset.cleanup_old_versions(versions=old, error_if_tagged_old_versions=False).old_versions
    table.checkout_latest()
    return TableUpkeep(
        table=table.name,
        rows=table.count_rows(),
        fragments_before=fragments_before,
        fragments_after=len(dataset.get_fragments()),
        versions_before=len(versions),
        versions_removed=int(removed),
        indexes_folded=sorted(stale),
        version=table.version,
    )


def _compact(dataset: Any, name: str) -> Any:
    """Compact, retrying when another writer's commit won the race; returns the dataset, compacted."""
    for attempt in range(1, COMPACT_ATTEMPTS + 1):
        try:
            dataset.optimize.compact_files()
            return dataset
        except OSError as exc:
            if "conflict" not in str(exc).lower():
                raise
            if attempt == COMPACT_ATTEMPTS:
                raise MaintenanceConflictError(
                    f"table {name}: another writer committed during each of {COMPACT_ATTEMPTS} compactions "
                    "(a writer on another host: the writer lock covers this host only); nothing was lost, "
                    "run `rag-app maintain` again when it is done"
                ) from None
            dataset = dataset.checkout_version(dataset.latest_version)
    return dataset
