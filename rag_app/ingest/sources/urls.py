"""A list of URLs as a source: each fetched (conditionally, politely) by :class:`HttpFetcher`.

A page's document id is the URL as declared (stable when the site moves the page behind a redirect);
the URL it was finally read from is its ``source`` and the redirect is reported. The sitemap source
(:mod:`.sitemap`) feeds the same conversion with the sitemap's URLs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.ingest.sources.base import (
    Failure,
    GlobFilter,
    Known,
    Skipped,
    SourceEvent,
    SourceItem,
    Unchanged,
    Validators,
)
from rag_app.ingest.sources.http_fetch import FetchResult, HttpFetcher


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL; else an error saying what a URL source needs."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"not an http(s) URL: {url!r}; URL and sitemap sources need absolute URLs")
    return url


class UrlSource:
    """The pages at ``urls`` (those passing ``globs``), fetched with ``settings``' politeness rules."""

    def __init__(self, settings: Settings, urls: Sequence[str], globs: GlobFilter | None = None) -> None:
        self.settings = settings
        self.urls = [check_url(u) for u in urls]
        self.globs = globs or GlobFilter()
        self.key = "url:" + " ".join(self.urls)

    def scan(self, known: Mapping[str, Known]) -> Iterator[SourceEvent]:
        """Each URL once (in completion order): fetched, 304-unchanged, disallowed or failed."""
        wanted = [(u, None) for u in dict.fromkeys(self.urls) if self.globs.accepts(u)]
        with HttpFetcher(self.settings) as fetcher:
            yield from fetch_events(fetcher, wanted, known)


def fetch_events(
    fetcher: HttpFetcher, pages: Iterable[tuple[str, str | None]], known: Mapping[str, Known]
) -> Iterator[SourceEvent]:
    """Fetch ``(url, lastmod)`` pages, conditionally where ``known`` remembers validators, as events.

    A page whose sitemap ``lastmod`` equals the remembered one is not requested at all.
    """
    requests: list[tuple[str, Validators | None]] = []
    versions: dict[str, str | None] = {}
    for url, lastmod in pages:
        before = known.get(url)
        if before is not None and lastmod and before.validators.version == lastmod:
            yield Unchanged(url, f"sitemap lastmod {lastmod} unchanged")
            continue
        versions[url] = lastmod
        requests.append((url, before.validators if before is not None else None))
    for result in fetcher.fetch_many(requests):
        yield _event(result, versions.get(result.url))


def _event(result: FetchResult, lastmod: str | None) -> SourceEvent:
    v = result.validators
    if result.not_modified:
        return Unchanged(result.url, "304 Not Modified", Validators(v.etag, v.last_modified, lastmod))
    if result.disallowed:
        return Skipped(result.url, result.error or "disallowed by robots.txt")
    if result.data is None:
        return Failure(
            result.url,
            result.error or "no content",
            status=result.status,
            gone=result.gone,
            redirects=result.redirects,
        )
    return SourceItem(
        uri=result.url,
        name=url_name(result.final_url),
        source=result.final_url,
        content_type=result.content_type,
        data=result.data,
        doc_id=result.url,
        validators=Validators(v.etag, v.last_modified, lastmod),
        redirects=result.redirects,
    )


def url_name(url: str) -> str:
    """A file-like name for a URL (its last path segment, else ``index``): the loaders read the
    format from it when the content type does not say."""
    segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return segment or "index"


__all__ = ["UrlSource", "check_url", "fetch_events", "url_name"]
