"""Content sources: a folder, URLs, a sitemap, an object-storage prefix (one module per kind).

Each source yields :mod:`.base` events (an item to parse, an unchanged item, a failure, a skip);
:mod:`rag_app.ingest.sync` turns them into committed documents and remembered validators
(:mod:`.state`). :func:`build_sources` maps a declared :class:`~rag_app.core.settings.SourceSpec`
(``[[sources]]`` in ``rag.toml``, or the ``--url/--sitemap/--s3`` options) to its sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.sources.base import GlobFilter, Source, SourceError
from rag_app.ingest.sources.folder import FolderSource
from rag_app.ingest.sources.s3 import S3Source
from rag_app.ingest.sources.sitemap import SitemapSource
from rag_app.ingest.sources.urls import UrlSource


def spec_locations(spec: SourceSpec) -> list[str]:
    """The spec's location(s) as a list (``location`` may be one string or a list of them)."""
    return [spec.location] if isinstance(spec.location, str) else list(spec.location)


def build_sources(settings: Settings, spec: SourceSpec, *, s3_client: object = None) -> list[Source]:
    """The sources ``spec`` declares: one per folder, sitemap or prefix; one for all its URLs.

    ``s3_client`` replaces the boto3 client the settings would build (shared by a whole sync).
    """
    globs = GlobFilter.of(spec.include, spec.exclude)
    locations = spec_locations(spec)
    if not locations:
        raise SourceError(f"source {spec.kind} of {spec.site}/{spec.collection} names no location")
    if spec.kind == "url":
        return [UrlSource(settings, locations, globs)]
    if spec.kind == "folder":
        return [FolderSource(loc, globs) for loc in locations]
    if spec.kind == "sitemap":
        return [SitemapSource(settings, loc, globs) for loc in locations]
    return [S3Source(settings, loc, globs, client=s3_client) for loc in locations]


def specs_from_options(
    site: str,
    collection: str,
    *,
    paths: Sequence[Path | str] = (),
    urls: Sequence[str] = (),
    sitemaps: Sequence[str] = (),
    s3: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    prune: bool = False,
) -> list[SourceSpec]:
    """The ``[[sources]]`` equivalent of ``rag-app ingest``'s inputs (PATHS, ``--url``, ``--sitemap``,
    ``--s3``), so one-off ingests and ``rag-app sync`` share the state that skips unchanged items."""
    common = {"site": site, "collection": collection, "include": list(include), "exclude": list(exclude)}
    specs = [SourceSpec(kind="folder", location=str(p), prune=prune, **common) for p in paths]
    if urls:
        specs.append(SourceSpec(kind="url", location=list(urls), prune=prune, **common))
    specs += [SourceSpec(kind="sitemap", location=u, prune=prune, **common) for u in sitemaps]
    specs += [SourceSpec(kind="s3", location=u, prune=prune, **common) for u in s3]
    return specs


__all__ = ["GlobFilter", "Source", "SourceError", "build_sources", "spec_locations", "specs_from_options"]
