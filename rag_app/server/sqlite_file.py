"""One small SQLite file shared by every server worker: per-thread connections, WAL, write transactions.

The server keeps two small transactional records next to the index: the answer log with its feedback
(:mod:`rag_app.server.feedback_store`) and the ingest jobs (:mod:`rag_app.server.job_store`). Both
are written by several worker processes (and replicas sharing a data dir) at once, so both need the
same handling, which lives here once:

- WAL mode: readers never block the writer; ``busy_timeout`` makes concurrent writers wait, not fail.
- One connection per thread and process (reopened after a fork), kept open: closing the last
  connection of a WAL database checkpoints it, which would cost an fsync on every operation.
- Write transactions start with ``BEGIN IMMEDIATE``, taking the write lock up front, so two processes
  never both read and then both try to upgrade (which SQLite answers with SQLITE_BUSY).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

#: How long a writer waits for another process's write transaction before failing.
BUSY_TIMEOUT_MS = 30000

Synchronous = Literal["FULL", "NORMAL"]


class SqliteFile:
    """The SQLite database at ``path``, created with ``schema`` (idempotent DDL) on first use."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = Path(path)
        self.schema = schema
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (rows as :class:`sqlite3.Row`; autocommit outside :meth:`write`)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file; a no-op once set
        conn.executescript(self.schema)
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def write(self, *, synchronous: Synchronous) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends (rolled back on an exception).

        ``synchronous``: FULL makes the commit survive a power loss; NORMAL (in WAL mode) survives a
        crash of the process but may lose the last commits on power loss, for far fewer fsyncs.
        """
        conn = self.connect()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the calling thread's connection (others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def dumps(value: Any) -> str:
    """Compact JSON for a TEXT column (non-JSON values such as dates as their ``str``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def loads(text: str | None, empty: Any) -> Any:
    """A JSON column's value; ``empty`` for NULL (a blanked or not yet written column)."""
    return empty if text is None else json.loads(text)
