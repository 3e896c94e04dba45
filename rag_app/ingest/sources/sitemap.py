"""A sitemap as a source: ``sitemap.xml`` (or a sitemap index of them, gzipped or not) lists the pages.

The sitemap is read every run (it is the list of what exists: a page it no longer lists is gone and
may be pruned). A page whose ``<lastmod>`` equals the one remembered from the last committed run is
not requested at all; any other page is fetched conditionally (ETag / Last-Modified), so even a site
without ``<lastmod>`` costs a 304 per unchanged page. A sitemap that cannot be read or parsed fails
the whole source (its page list would be incomplete, so nothing is pruned on its account).
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from urllib.parse import urljoin

import httpx

from rag_app.core.settings import Settings
from rag_app.ingest.sources.base import GlobFilter, Known, SourceError, SourceEvent
from rag_app.ingest.sources.http_fetch import HttpFetcher
from rag_app.ingest.sources.urls import check_url, fetch_events

#: How deep sitemap indexes may nest (an index of indexes of sitemaps is already unusual).
MAX_DEPTH = 3
#: Most sitemaps read for one source (the protocol caps an index at 50,000 entries; so do we).
MAX_SITEMAPS = 50_000


class SitemapSource:
    """The pages a sitemap (or sitemap index) at ``url`` lists, those passing ``globs``."""

    def __init__(self, settings: Settings, url: str, globs: GlobFilter | None = None) -> None:
        self.settings = settings
        self.url = check_url(url)
        self.globs = globs or GlobFilter()
        self.key = f"sitemap:{self.url}"

    def scan(self, known: Mapping[str, Known]) -> Iterator[SourceEvent]:
        with HttpFetcher(self.settings) as fetcher:
            pages = read_sitemap(fetcher, self.url)
            wanted = [(loc, lastmod) for loc, lastmod in pages.items() if self.globs.accepts(loc)]
            yield from fetch_events(fetcher, wanted, known)


def read_sitemap(fetcher: HttpFetcher, url: str) -> dict[str, str | None]:
    """``loc`` -> ``lastmod`` (or ``None``) of every page the sitemap at ``url`` lists, following
    sitemap indexes; :class:`SourceError` naming the sitemap when one cannot be read."""
    pages: dict[str, str | None] = {}
    queue: list[tuple[str, int]] = [(url, 0)]
    seen: set[str] = set()
    while queue:
        current, depth = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        if len(seen) > MAX_SITEMAPS:
            raise SourceError(f"sitemap {url}: more than {MAX_SITEMAPS} sitemaps listed; split the source")
        root = _parse(current, _download(fetcher, current))
        kind = _local(root.tag)
        if kind == "sitemapindex":
            if depth >= MAX_DEPTH:
                raise SourceError(f"sitemap {current}: indexes nested deeper than {MAX_DEPTH}")
            for loc, _ in _entries(root, "sitemap", current):
                queue.append((loc, depth + 1))
        elif kind == "urlset":
            for loc, lastmod in _entries(root, "url", current):
                pages.setdefault(loc, lastmod)
        else:
            raise SourceError(
                f"sitemap {current}: root element <{kind}> is neither <urlset> nor <sitemapindex>"
            )
    return pages


def _download(fetcher: HttpFetcher, url: str) -> bytes:
    verdict = fetcher.robots.check(url)
    if not verdict.allowed:
        raise SourceError(f"sitemap {url}: {verdict.reason}")
    try:
        response = fetcher.get(url)
    except httpx.HTTPStatusError as exc:
        raise SourceError(
            f"sitemap {url}: HTTP {exc.response.status_code}; check the sitemap URL (nothing of this "
            "source was ingested or pruned)"
        ) from None
    except httpx.HTTPError as exc:
        raise SourceError(f"sitemap {url}: {type(exc).__name__}: {exc}; retry later") from None
    data = response.content
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise SourceError(f"sitemap {url}: broken gzip data ({exc})") from None
    return data


def _parse(url: str, data: bytes) -> ET.Element:
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in head:  # sitemaps never need them; entities can explode
        raise SourceError(f"sitemap {url}: DOCTYPE/ENTITY declarations are not accepted in a sitemap")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise SourceError(f"sitemap {url}: not well-formed XML ({exc})") from None


def _entries(root: ET.Element, tag: str, base: str) -> Iterator[tuple[str, str | None]]:
    for entry in root:
        if _local(entry.tag) != tag:
            continue
        loc = lastmod = None
        for child in entry:
            name = _local(child.tag)
            if name == "loc" and child.text:
                loc = child.text.strip()
            elif name == "lastmod" and child.text:
                lastmod = child.text.strip()
        if loc:
            yield urljoin(base, loc), lastmod


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


__all__ = ["SitemapSource", "read_sitemap"]
