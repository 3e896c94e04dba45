"""Writer locks: one writer at a time per (site, collection).

Why: an ingest is read-compare-write (read the table's document hashes, diff them with the input,
write the difference). LanceDB commits are atomic but not serialized against a diff computed from
an older version, so two concurrent ``merge_insert`` commits of the same new documents both insert
them and every chunk appears twice. Holding a writer lock around the whole read-compare-write makes
the second writer see the first one's commit and find nothing to do.

:class:`WriterLocks` is the protocol every writer uses (CLI ingest, the HTTP ingest, maintenance),
so the mechanism can change without touching them. :class:`FileWriterLocks` is the local one: an
``fcntl.flock`` on ``data_dir/locks/<site>__<collection>.lock``. It serializes writers on the same
host (processes and threads alike: each ``hold`` opens its own file description), whether the
database is a local directory or on object storage (the lock files stay in the local data dir).

Across hosts sharing a database on object storage (``RAG_DB_URI=s3://...``), what holds and what not:

- Commits are never lost or torn. LanceDB 0.40 (Lance 14) commits a version by writing its manifest
  with a conditional put (S3 ``If-None-Match: *``; preconditions on GCS and Azure): of two hosts
  committing the same version number one is refused, and Lance rebases it onto the winner and retries
  (appends, merge-inserts, deletes) or fails it with a retryable conflict (a compaction against a
  concurrent update; :mod:`rag_app.store.upkeep` retries it). Checked on the moto S3 server the
  tests use: it answers 412 to the losing put, and two connections appending and merge-inserting
  in a loop kept every row. This needs a store that honours conditional puts (AWS S3, GCS, Azure,
  MinIO); on one that ignores them, concurrent commits can overwrite each other.
- An ingest's read-compare-write is not serialized across hosts: this lock lives on one host. Two
  hosts ingesting the same new documents at once both insert them (checked on moto: two racing
  ``merge_insert`` commits of the same new ids kept both copies). ``rag-app stats`` and ``doctor``
  report such duplicates, ``rag-app maintain --dedupe`` removes them. Run the writers of a collection
  (ingest, sync, the HTTP ingest jobs, maintain) on one host; serving replicas only read and need no
  lock. A lock in the object store (a conditional-put lease) implementing :class:`WriterLocks` would
  lift this; there is none yet.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from rag_app.core.errors import RagError
from rag_app.core.settings import Settings

#: How often a waiting writer retries the lock.
POLL_S = 0.05


class WriterLockTimeout(RagError):
    """Another writer held the collection longer than ``ingest_lock_timeout_s``."""

    exit_code = 7


class WriterLocks(Protocol):
    """Exclusive writer access to one collection, for the duration of a ``with`` block."""

    def hold(self, site: str, collection: str) -> AbstractContextManager[None]: ...


class FileWriterLocks:
    """``flock`` on a lock file per collection under ``directory``: serializes same-host writers only."""

    def __init__(self, directory: Path, timeout_s: float) -> None:
        self.directory = Path(directory)
        self.timeout_s = timeout_s

    def path(self, site: str, collection: str) -> Path:
        return self.directory / f"{site}__{collection}.lock"

    @contextmanager
    def hold(self, site: str, collection: str) -> Iterator[None]:
        """Wait up to ``timeout_s`` for the collection's lock; released on exit, even on a crash.

        The kernel drops an ``flock`` when its process dies, so a killed writer never leaves a
        stale lock behind (the lock file itself stays, empty, and is reused).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(site, collection)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WriterLockTimeout(
                            f"collection {site}/{collection} is being written by another process "
                            f"(lock {path}) and it did not finish within {self.timeout_s:g}s "
                            "(RAG_INGEST_LOCK_TIMEOUT_S); wait for it, or raise the timeout"
                        ) from None
                    time.sleep(POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def writer_locks(settings: Settings) -> WriterLocks:
    """The writer locks for this data dir (today always the local file lock)."""
    return FileWriterLocks(settings.data_dir / "locks", settings.ingest_lock_timeout_s)
