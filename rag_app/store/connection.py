"""The one way to open the LanceDB database, on local disk or on object storage, and its table handles.

Why one helper: the store, ``doctor`` and ``maintain`` must agree on where the database is and how it is
read. :class:`Database` connects to ``settings.db_location`` (a local path, or an ``s3://``, ``gs://``,
``az://`` URI that replicas share) with LanceDB's ``storage_options`` from settings (endpoint, region,
``allow_http``; credentials are best left to the environment or the cloud's own chain, which LanceDB
reads itself). Local and remote take the same code path; only a local directory is created.

Why handles are cached: opening a table reads its manifest (on object storage a LIST and a few GETs),
and a listing of tables costs another LIST. The store used to list and reopen on every search, only so
that a long-lived reader would see other processes' commits. Now a handle is opened once and brought
to the table's latest version when the store hands it out (:meth:`Database.get`) and its last check is
``read_consistency_s`` old or more (0: every time). So a replica sees a commit within
``read_consistency_s`` and, since a document's chunks are written in one commit
(:mod:`rag_app.store.vector_store`), never half of a document; a caller holds a handle for one
operation and asks again for the next.

That is LanceDB's ``read_consistency_interval``, applied once per hand-out instead of inside LanceDB
before each read call: with the interval at 0 LanceDB checks before every call a query makes (count,
schema, vector search, full-text search): a hybrid query on the moto S3 server took 67 ms (median)
against about 20 ms with one check per table per query, and 24 ms with the old list-and-reopen. One
check also keeps all of a query's reads on one version. The connection itself is opened without an interval.

A table found missing is remembered for ``read_consistency_s``. Creating, overwriting and dropping
through :class:`Database` keep the cache right; a table another process drops is opened again (or
reported missing) at the next hand-out.

Secrets: no ``storage_options`` value appears in a repr, a log line or an error raised here.
:func:`display_location` strips user info and query strings from a URI; :meth:`Database.redact`
removes every storage-option value from an error text before it is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
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
    """One LanceDB connection and the table handles it has opened (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        import lancedb

        self.location = settings.db_location
        self.remote = settings.db_is_remote
        self.read_consistency_s = settings.read_consistency_s
        self._options = dict(settings.storage_options)
        self._tables: dict[str, Any] = {}
        self._checked: dict[str, float] = {}
        self._absent: dict[str, float] = {}
        self._lock = threading.Lock()
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
        does not exist (a miss is remembered as long, so polling a table not there yet costs no LIST)."""
        table = self._cached(name)
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
        table = self._cached(name)
        if table is None:
            checked = time.monotonic()
            table = self._call(f"open table {name}", lambda: self._conn.open_table(name))
            self._keep(name, table, checked)
        return table

    def create_table(self, name: str, data: Any = None, *, schema: Any = None, mode: str = "create") -> Any:
        """Create (or, ``mode="overwrite"``, replace in one commit) a table and keep its handle."""
        checked = time.monotonic()
        table = self._call(
            f"create table {name}", lambda: self._conn.create_table(name, data, schema=schema, mode=mode)
        )
        self._keep(name, table, checked)
        return table

    def drop_table(self, name: str) -> None:
        with self._lock:
            self._tables.pop(name, None)
        self._call(f"drop table {name}", lambda: self._conn.drop_table(name))

    def _keep(self, name: str, table: Any, checked: float) -> None:
        with self._lock:
            self._tables[name] = table
            self._checked[name] = checked
            self._absent.pop(name, None)

    def _cached(self, name: str) -> Any | None:
        """The cached handle, moved to the latest version if its last check is ``read_consistency_s``
        old or more; None when none is cached or the table went away (dropped by another process)."""
        with self._lock:
            table = self._tables.get(name)
            checked = self._checked.get(name, 0.0)
        now = time.monotonic()
        if table is None or now - checked < self.read_consistency_s:
            return table
        try:
            table.checkout_latest()
        except (OSError, RuntimeError, ValueError):
            with self._lock:
                if self._tables.get(name) is table:
                    del self._tables[name]
            return None
        with self._lock:
            self._checked[name] = max(now, self._checked.get(name, 0.0))
        return table

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
