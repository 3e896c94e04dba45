"""The one way to open the LanceDB database, on local disk or on object storage, and its table handles.

Why one helper: the store, ``doctor`` and ``maintain`` must agree on where the database is and how it is
read. :class:`Database` connects to ``settings.db_location`` (a local path, or an ``s3://``, ``gs://``,
``az://`` URI that replicas share) with LanceDB's ``storage_options`` from settings (endpoint, region,
``allow_http``; credentials are best left to the environment or the cloud's own chain, which LanceDB
reads itself). Local and remote take the same code path; only a local directory is created.

Why handles are cached: opening a table reads its manifest (on object storage a LIST and a few GETs),
and a listing of tables costs another LIST. The store used to list and reopen on every search, only so
that a long-lived reader would see other processes' commits. Now a handle is kept per table and handed
out (:meth:`Database.get`) to every thread that asks; when its last check is ``read_consistency_s`` old
or more (0: every time), the hand-out first checks for a newer version. So a replica sees a commit within
``read_consistency_s`` and, since a document's chunks are written in one commit
(:mod:`rag_app.store.vector_store`), never half of a document; a caller holds a handle for one
operation and asks again for the next.

Why a handed-out handle is never moved: LanceDB's ``checkout_latest`` moves a handle in place, and a
query makes several reads on its handle (count, schema, vector search, full-text search). Moving the one
shared handle while another thread's query was between two reads let a hybrid query read version N for
vectors and N+1 for full text, and merge chunks of a document's old and new version. So the check moves
a spare handle that nobody holds (opened the first time it is needed); when that one reached a newer
version it becomes the handed-out handle, and a thread still holding the old one finishes its query on
the version it started on (the old handle is freed once its last holder lets go). A check costs what
the in-place one did (one ``checkout_latest``), plus one open after each change: on the moto S3 server
a hybrid query took 19.3 ms (median) against 19.2 ms with the in-place check, and 27 ms against 25 ms
when a commit landed before each query.

That is LanceDB's ``read_consistency_interval``, applied once per hand-out instead of inside LanceDB
before each read call: with the interval at 0 LanceDB checks before every call a query makes (count,
schema, vector search, full-text search): a hybrid query on the moto S3 server took 67 ms (median)
against about 20 ms with one check per table per query, and 24 ms with the old list-and-reopen. One
check also keeps all of a query's reads on one version. The connection itself is opened without an interval.

Writers (:meth:`Database.writing`, entered by :meth:`rag_app.store.vector_store.VectorStore.writer`
under the collection's writer lock) get handles of their own instead: opened at the latest version when
first asked for inside the lock, so the read-compare-write diffs against the latest commit whatever
``read_consistency_s`` says, and moved by their own commits (and by ``checkout_latest`` in
:mod:`rag_app.store.upkeep`) without touching a handle a reader holds. When the writer lets go, this
process's next hand-out of its tables checks for the new version (read-your-writes in one process).

A table found missing is remembered for ``read_consistency_s``. Creating, overwriting and dropping
through :class:`Database` keep the cache right; a table another process drops is opened again (or
reported missing) at the next hand-out.

Secrets: no ``storage_options`` value appears in a repr, a log line or an error raised here.
:func:`display_location` strips user info and query strings from a URI; :meth:`Database.redact`
removes every storage-option value from an error text before it is raised.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from rag_app.core.errors import ServiceUnavailableError
from rag_app.core.settings import Settings

T = TypeVar("T")

#: Storage-option values shorter than this are not scrubbed from messages ("1", "on": no secret is).
MIN_SECRET_CHARS = 4
#: The most characters of a LanceDB error kept in a message (its debug dumps run to kilobytes).
MAX_ERROR_CHARS = 600


class StoreUnavailableError(ServiceUnavailableError):
    """The database could not be reached or read (object store down, wrong bucket or credentials)."""


def display_location(location: str) -> str:
    """``location`` safe to print: a URI without user info, query or fragment; a path unchanged."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def local_path(location: str) -> Path | None:
    """The directory of a local database (a plain path or ``file://``); None for object storage."""
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    return None if "://" in location else Path(location)


def redact(text: str, options: Mapping[str, str]) -> str:
    """``text`` with every storage-option value (and the longest first) replaced by ``***``."""
    for value in sorted({str(v) for v in options.values()}, key=len, reverse=True):
        if len(value) >= MIN_SECRET_CHARS:
            text = text.replace(value, "***")
    return text


class Database:
    """One LanceDB connection and the table handles it has opened (thread-safe).

    Handles handed out by :meth:`get` and :meth:`open_table` are shared by every thread of the process
    and never moved to another version once handed out; write through a handle only inside
    :meth:`writing` (which :meth:`rag_app.store.vector_store.VectorStore.writer` enters)."""

    def __init__(self, settings: Settings) -> None:
        import lancedb

        self.location = settings.db_location
        self.remote = settings.db_is_remote
        self.read_consistency_s = settings.read_consistency_s
        self._options = dict(settings.storage_options)
        self._tables: dict[str, Any] = {}  # the handles handed out (at most one per table at a time)
        self._spares: dict[str, Any] = {}  # handles nobody holds, moved by the version check
        self._checked: dict[str, float] = {}  # when each table's last check began (monotonic)
        self._absent: dict[str, float] = {}
        self._checking: dict[str, threading.Lock] = {}  # one version check per table at a time
        self._lock = threading.Lock()
        self._writers = threading.local()  # .slots: table name -> this thread's writer handle (or None)
        directory = local_path(self.location)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._conn = self._call(
            "connect", lambda: lancedb.connect(self.location, storage_options=self._options or None)
        )

    def __repr__(self) -> str:
        return f"Database({display_location(self.location)!r})"

    @property
    def shown(self) -> str:
        """Where the database is, safe to print."""
        return display_location(self.location)

    def redact(self, text: str) -> str:
        return redact(text, self._options)

    # ------------------------------------------------------------------------------ tables
    def table_names(self) -> list[str]:
        """Every table in the database (all pages of LanceDB's listing), sorted."""

        def listing() -> list[str]:
            names: list[str] = []
            token: str | None = None
            while True:
                page = self._conn.list_tables(page_token=token)
                names += list(getattr(page, "tables", page))
                token = getattr(page, "page_token", None)
                if not token:
                    return sorted(names)

        return self._call("list tables", listing)

    def get(self, name: str) -> Any | None:
        """The table's handle at its latest version (within ``read_consistency_s``), or None when it
        does not exist (a miss is remembered as long, so polling a table not there yet costs no LIST).
        Inside :meth:`writing` for ``name``: this thread's writer handle, at the latest version."""
        slots = self._writer_slots(name)
        if slots is not None:
            if slots[name] is None and name not in self.table_names():
                return None
            return self._writer_handle(slots, name)
        table = self._current(name)
        if table is not None:
            return table
        with self._lock:
            if self._absent.get(name, 0.0) > time.monotonic():
                return None
        if name not in self.table_names():
            with self._lock:
                if self.read_consistency_s > 0:
                    self._absent[name] = time.monotonic() + self.read_consistency_s
            return None
        return self.open_table(name)

    def open_table(self, name: str) -> Any:
        """:meth:`get` for a table that exists (else LanceDB's error, as :class:`StoreUnavailableError`)."""
        slots = self._writer_slots(name)
        if slots is not None:
            return self._writer_handle(slots, name)
        table = self._current(name)
        if table is None:
            checked = time.monotonic()
            table = self._call(f"open table {name}", lambda: self._conn.open_table(name))
            self._keep(name, table, checked)
        return table

    def create_table(self, name: str, data: Any = None, *, schema: Any = None, mode: str = "create") -> Any:
        """Create (or, ``mode="overwrite"``, replace in one commit) a table; inside :meth:`writing` its
        handle is the writer's, else it is kept for :meth:`get`."""
        checked = time.monotonic()
        table = self._call(
            f"create table {name}", lambda: self._conn.create_table(name, data, schema=schema, mode=mode)
        )
        slots = self._writer_slots(name)
        if slots is None:
            self._keep(name, table, checked)
        else:
            slots[name] = table
            self.expire([name])
        return table

    def drop_table(self, name: str) -> None:
        slots = self._writer_slots(name)
        if slots is not None:
            slots[name] = None
        with self._lock:
            self._tables.pop(name, None)
            self._spares.pop(name, None)
        self._call(f"drop table {name}", lambda: self._conn.drop_table(name))

    def expire(self, names: Iterable[str]) -> None:
        """Make the next hand-out of each of ``names`` check for a newer version (and forget that it
        was missing), whatever ``read_consistency_s``: after this process wrote it."""
        with self._lock:
            for name in names:
                self._checked.pop(name, None)
                self._absent.pop(name, None)

    # ------------------------------------------------------------------------------ writers
    @contextmanager
    def writing(self, names: Iterable[str]) -> Iterator[None]:
        """Inside the block, this thread gets handles of ``names`` of its own (hold the tables' writer
        lock around it): opened at the latest version when first asked for, so a read-compare-write
        diffs against the latest commit, and moved by the writer's commits without moving a handle
        any reader holds. On exit the writer's handles are let go and the next hand-out of ``names``
        checks for the version the writer committed."""
        slots: dict[str, Any] | None = getattr(self._writers, "slots", None)
        if slots is None:
            slots = self._writers.slots = {}
        mine = [name for name in dict.fromkeys(names) if name not in slots]
        slots.update(dict.fromkeys(mine))
        try:
            yield
        finally:
            for name in mine:
                slots.pop(name, None)
            self.expire(mine)

    def _writer_slots(self, name: str) -> dict[str, Any] | None:
        """This thread's writer handles when it is inside :meth:`writing` for ``name``, else None."""
        slots: dict[str, Any] | None = getattr(self._writers, "slots", None)
        return slots if slots is not None and name in slots else None

    def _writer_handle(self, slots: dict[str, Any], name: str) -> Any:
        table = slots[name]
        if table is None:
            table = self._call(f"open table {name}", lambda: self._conn.open_table(name))
            slots[name] = table
        return table

    # ------------------------------------------------------------------------------ readers
    def _keep(self, name: str, table: Any, checked: float) -> None:
        with self._lock:
            self._tables[name] = table
            self._checked[name] = checked
            self._absent.pop(name, None)

    def _current(self, name: str) -> Any | None:
        """The handed-out handle, after a version check if the last one began ``read_consistency_s``
        or more before this call; None when none is kept or the table went away (dropped by another
        process).

        The check moves the spare handle, never the handed-out one (see the module docstring); a
        spare that reached a newer version takes its place. Checks of one table run one at a time,
        and a caller that waited for another's check uses its result when it began after the call."""
        called = time.monotonic()
        with self._lock:
            table = self._tables.get(name)
            if table is None or called - self._checked.get(name, -math.inf) < self.read_consistency_s:
                return table
            checking = self._checking.setdefault(name, threading.Lock())
        with checking:
            with self._lock:
                table = self._tables.get(name)
                if table is None or called - self._checked.get(name, -math.inf) < self.read_consistency_s:
                    return table
                spare = self._spares.pop(name, None)
            started = time.monotonic()
            try:
                if spare is None:
                    spare = self._conn.open_table(name)  # at the latest version
                else:
                    spare.checkout_latest()
                moved = spare.version != table.version
            except (OSError, RuntimeError, ValueError):
                with self._lock:
                    if self._tables.get(name) is table:
                        del self._tables[name]
                return None
            with self._lock:
                current = self._tables.get(name)
                if current is not table:  # created, overwritten or dropped meanwhile
                    return current
                if moved:
                    self._tables[name] = spare  # whoever holds ``table`` stays on its version
                else:
                    self._spares[name] = spare
                self._checked[name] = max(started, self._checked.get(name, -math.inf))
                return self._tables[name]

    # ------------------------------------------------------------------------------ errors
    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run a LanceDB call; its failure becomes :class:`StoreUnavailableError`, secrets removed."""
        try:
            return action()
        except (OSError, RuntimeError, ValueError) as exc:
            detail = self.redact(f"{type(exc).__name__}: {exc}")
            if len(detail) > MAX_ERROR_CHARS:
                detail = detail[:MAX_ERROR_CHARS] + " ..."
            raise StoreUnavailableError(
                f"LanceDB at {self.shown}: {what} failed ({detail}); check RAG_DB_URI, "
                "RAG_STORAGE_OPTIONS and the object store's credentials"
            ) from None
