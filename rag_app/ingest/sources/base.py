"""What a content source yields, and the protocol every source (folder, URLs, sitemap, S3) follows.

A source scans its location and yields one event per item: the item's bytes (or its path) to parse,
an "unchanged" (a 304, the same ETag, the same ``<lastmod>``: nothing downloaded, nothing parsed),
a failure (a 404, a timeout, an unreadable file: reported per item, the run goes on) or a skip
(``robots.txt`` says no). Sources never write: :mod:`rag_app.ingest.sync` turns items into documents,
commits them, and only then remembers their validators (:mod:`.state`), so a crash never records a
page as done that the index does not hold.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from rag_app.core.errors import RagError


class SourceError(RagError):
    """A whole source could not be read (its folder is missing, its sitemap or bucket listing failed):
    nothing of it is ingested and its collection is not pruned this run."""

    exit_code = 8


@dataclass(frozen=True)
class Validators:
    """What tells a later run that an item is unchanged without downloading it.

    ``etag``/``last_modified``: the HTTP validators sent back as ``If-None-Match``/``If-Modified-Since``
    (an S3 ETag compared with the listing's); ``version``: a sitemap ``<lastmod>`` or an S3 ETag.
    """

    etag: str | None = None
    last_modified: str | None = None
    version: str | None = None

    def empty(self) -> bool:
        return not (self.etag or self.last_modified or self.version)


@dataclass(frozen=True)
class Known:
    """What the last successful run remembered of an item: its validators and the ids it produced."""

    validators: Validators
    doc_ids: tuple[str, ...]
    source: str = ""


@dataclass
class SourceItem:
    """One item to parse: fetched ``data`` (URL, S3) or a local ``path`` (folder, with its ``root``).

    ``uri`` keys the remembered state; ``doc_id`` is the id a single-document format gets (a URL's
    or an object's URI; ``None`` for files, whose id is their path under ``root``). ``source`` is
    recorded on the documents (the final URL after redirects).
    """

    uri: str
    name: str
    source: str
    content_type: str | None = None
    data: bytes | None = None
    path: Path | None = None
    root: Path | None = None
    doc_id: str | None = None
    validators: Validators = field(default_factory=Validators)
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unchanged:
    """The item is as the last run left it (``reason``: 304, same ETag, same lastmod): not fetched.
    ``validators``: newer ones to remember (a 304 to a page whose sitemap lastmod moved)."""

    uri: str
    reason: str
    validators: Validators | None = None


@dataclass(frozen=True)
class Failure:
    """The item could not be read. ``gone`` (404, 410, a deleted file) means it no longer exists and
    may be pruned; any other failure (a timeout, a 503) keeps the documents it produced before."""

    uri: str
    reason: str
    status: int | None = None
    gone: bool = False
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """The item was deliberately not fetched (``robots.txt`` disallows it); it counts as not present."""

    uri: str
    reason: str


SourceEvent = SourceItem | Unchanged | Failure | Skipped


class Source(Protocol):
    """A content source: ``key`` names it in the state and reports; ``scan`` yields its items."""

    key: str

    def scan(self, known: Mapping[str, Known]) -> Iterator[SourceEvent]:
        """One event per item. ``known`` maps each URI to what the last committed run remembered;
        a source uses it to skip unchanged items. Raises :class:`SourceError` when it cannot list
        its items at all."""
        ...


@dataclass(frozen=True)
class GlobFilter:
    """``--include``/``--exclude`` globs, matched against a relative path, an object key under its
    prefix, or a URL (its path or the whole URL). ``*`` crosses ``/``; a pattern without ``/`` also
    matches the last path segment alone, so ``*.pdf`` and ``drafts/*`` both do what they say."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def of(cls, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> GlobFilter:
        return cls(tuple(include), tuple(exclude))

    def accepts(self, name: str) -> bool:
        """Whether ``name`` passes: matched by some include (or none is given) and by no exclude."""
        candidates = _candidates(name)
        if self.include and not any(_match(c, p) for p in self.include for c in candidates):
            return False
        return not any(_match(c, p) for p in self.exclude for c in candidates)


def _candidates(name: str) -> list[str]:
    if "://" in name:
        path = urlsplit(name).path or "/"
        return [name, path, path.lstrip("/")]
    return [name]


def _match(name: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(name.rstrip("/").rsplit("/", 1)[-1], pattern)


__all__ = [
    "Failure",
    "GlobFilter",
    "Known",
    "Skipped",
    "Source",
    "SourceError",
    "SourceEvent",
    "SourceItem",
    "Unchanged",
    "Validators",
]
