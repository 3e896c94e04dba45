"""URL and sitemap sources against a real loopback web site (tests/doc_site.py): HTML pages rendered
from the shared FastAPI docs, robots.txt, ETags and 304s, a redirect, a 404, a sitemap index with
<lastmod>, a flaky 503; real httpx, real trafilatura parsing, real LanceDB, the real MiniLM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.pipeline import chunk_fingerprint
from rag_app.ingest.sources.base import GlobFilter
from rag_app.ingest.sources.http_fetch import HttpFetcher
from rag_app.ingest.sources.sitemap import read_sitemap
from rag_app.ingest.sources.state import SourceState, state_path
from rag_app.ingest.sync import sync_collection
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore, read_columns
from tests.doc_site import DOCS, DocSite, Page, SiteServer, build_site, render_page

SITE, COLLECTION = "builddaily", "resources"


@pytest.fixture
def site() -> Iterator[DocSite]:
    content = build_site()
    with SiteServer(content):
        yield content


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """The test settings with a high per-host rate (the politeness default would only slow tests)."""
    return settings.model_copy(update={"fetch_per_host_rps": 200.0, "fetch_retries": 2})


def _doc_ids(settings: Settings) -> dict[str, str]:
    store = VectorStore(settings)
    table = store.open_table(SITE, COLLECTION)
    return store.doc_hashes(table) if table is not None else {}


def _url_spec(urls: list[str], prune: bool = False) -> SourceSpec:
    return SourceSpec(site=SITE, collection=COLLECTION, kind="url", location=urls, prune=prune)


def test_urls_are_fetched_robots_honoured_redirects_and_404s_reported(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    pages = site.in_sitemap[:2]
    urls = [site.page_url(p) for p in pages] + [
        site.page_url("/private/translations.html"),
        site.page_url("/old/" + site.in_sitemap[2].removeprefix("/docs/")),
        site.page_url("/docs/no-such-page.html"),
    ]
    report = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    source = report.sources[0]
    assert source.fetched == 3 and source.unchanged == 0
    assert source.added == 3 and source.chunks_written > 0
    assert [f["uri"] for f in source.failed] == [urls[4]]
    assert source.failed[0]["status"] == 404 and "404" in source.failed[0]["reason"]
    assert [s["uri"] for s in source.skipped] == [urls[2]] and "robots.txt" in source.skipped[0]["reason"]
    assert source.redirects == [{"url": urls[3], "to": site.page_url(site.in_sitemap[2])}]
    assert not report.ok  # a 404 fails the run (and `rag-app sync` exits non-zero) ...
    ids = _doc_ids(fast)
    assert set(ids) == {urls[0], urls[1], urls[3]}  # ... but everything else is in (ids: declared URLs)
    assert site.count("/private/translations.html") == 0  # disallowed: never requested
    assert site.count("/robots.txt") == 1

    store = VectorStore(fast)
    rows = read_columns(store.open_table(SITE, COLLECTION), ["doc_id", "text"]).to_pylist()
    page_text = " ".join(r["text"] for r in rows if r["doc_id"] == urls[0])
    assert "environment variable" in page_text.lower()
    assert "Home | Docs | Blog" not in page_text and "Copyright FastAPI docs site" not in page_text
    assert "analytics" not in page_text  # boilerplate and scripts dropped by the HTML loader


def test_second_run_answers_304_and_re_embeds_nothing(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    urls = [site.page_url(p) for p in site.in_sitemap]
    first = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    assert first.ok and first.sources[0].added == len(urls)
    served = sum(site.count(p, 200) for p in site.in_sitemap)
    hashes = _doc_ids(fast)

    second = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    src = second.sources[0]
    assert second.ok
    assert (src.fetched, src.unchanged, src.added, src.updated, src.chunks_written) == (0, len(urls), 0, 0, 0)
    assert src.unchanged_documents == len(urls)
    assert sum(site.count(p, 200) for p in site.in_sitemap) == served  # no page body sent again
    assert site.total(304) == len(urls)
    assert _doc_ids(fast) == hashes

    # The editors change one page: only that one is downloaded and re-embedded.
    changed = site.in_sitemap[0]
    _, other = render_page(DOCS / "newsletter.md")
    site.pages[changed] = Page(other)
    third = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    src = third.sources[0]
    assert (src.fetched, src.unchanged, src.updated, src.added) == (1, len(urls) - 1, 1, 0)
    assert _doc_ids(fast)[site.page_url(changed)] != hashes[site.page_url(changed)]


def test_sitemap_index_lastmod_skips_requests_and_prune_removes_unlisted_pages(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    spec = SourceSpec(
        site=SITE, collection=COLLECTION, kind="sitemap", location=site.page_url("/sitemap.xml"), prune=True
    )
    first = sync_collection(fast, SITE, COLLECTION, [spec], embedder=minilm)
    assert first.ok and first.sources[0].added == 4
    before = {p: site.count(p) for p in site.in_sitemap}

    # Nothing changed: the sitemap is read again, but no page is requested (same <lastmod>).
    second = sync_collection(fast, SITE, COLLECTION, [spec], embedder=minilm)
    assert second.sources[0].unchanged == 4 and second.sources[0].fetched == 0
    assert {p: site.count(p) for p in site.in_sitemap} == before

    # One page gets a new lastmod (same body: a 304, nothing parsed), one leaves the sitemap (pruned).
    site.pages[site.in_sitemap[0]].lastmod = "2026-02-01"
    gone = site.in_sitemap.pop()
    third = sync_collection(fast, SITE, COLLECTION, [spec], embedder=minilm)
    src = third.sources[0]
    assert third.ok and third.pruned
    assert (src.fetched, src.unchanged, src.removed) == (0, 3, 1)
    assert site.count(site.in_sitemap[0], 304) == 1
    assert third.removed_ids == [site.page_url(gone)]
    assert site.page_url(gone) not in _doc_ids(fast)
    path = state_path(fast, SITE, COLLECTION)
    remembered = SourceState.load(path, chunk_fingerprint(fast, minilm)).items
    assert set(remembered) == {site.page_url(p) for p in site.in_sitemap}
    assert remembered[site.page_url(site.in_sitemap[0])].validators.version == "2026-02-01"
    # Another embedder or chunking: the remembered validators are ignored, so everything is re-read.
    assert SourceState.load(path, "another-fingerprint").items == {}


def test_a_page_that_now_answers_404_is_pruned_but_a_503_keeps_its_document(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    urls = [site.page_url(p) for p in site.in_sitemap]
    sync_collection(fast, SITE, COLLECTION, [_url_spec(urls, prune=True)], embedder=minilm)
    del site.pages[site.in_sitemap[0]]  # 404 from now on
    # a 503 on every try (more than fetch_retries): a transient failure
    flaky = site.in_sitemap[1]
    no_retry = fast.model_copy(update={"fetch_retries": 0})
    site.flaky.add(flaky)
    report = sync_collection(no_retry, SITE, COLLECTION, [_url_spec(urls, prune=True)], embedder=minilm)
    failed = {f["uri"]: f.get("status") for f in report.sources[0].failed}
    assert failed == {urls[0]: 404, urls[1]: 503}
    assert report.removed_ids == [urls[0]]
    assert set(_doc_ids(fast)) == set(urls[1:])


def test_retries_recover_from_a_503(fast: Settings, site: DocSite) -> None:
    path = site.in_sitemap[0]
    site.flaky.add(path)
    with HttpFetcher(fast, backoff_s=0.01) as fetcher:
        result = fetcher.fetch(site.page_url(path))
    assert result.status == 200 and result.data == site.pages[path].body
    assert site.count(path, 503) == 1 and site.count(path, 200) == 1


def test_conditional_fetch_and_size_limit(fast: Settings, site: DocSite) -> None:
    path = site.in_sitemap[0]
    with HttpFetcher(fast) as fetcher:
        first = fetcher.fetch(site.page_url(path))
        again = fetcher.fetch(site.page_url(path), first.validators)
        assert first.validators.etag == site.pages[path].etag and first.validators.last_modified
        assert again.not_modified and again.data is None and again.validators == first.validators
    with HttpFetcher(fast, max_bytes=100) as small:
        big = small.fetch(site.page_url(path))
    assert big.data is None and "over the limit of 100 bytes" in (big.error or "")


def test_read_sitemap_follows_the_index_and_keeps_lastmod(fast: Settings, site: DocSite) -> None:
    with HttpFetcher(fast) as fetcher:
        pages = read_sitemap(fetcher, site.page_url("/sitemap.xml"))
    assert pages == {site.page_url(p): "2026-01-01" for p in site.in_sitemap}
    assert GlobFilter.of(["/docs/v*"]).accepts(site.page_url("/docs/virtual-environments.html"))
    assert not GlobFilter.of(exclude=["*.html"]).accepts(site.page_url("/docs/x.html"))


def test_a_missing_sitemap_fails_the_source_and_prunes_nothing(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    urls = [site.page_url(p) for p in site.in_sitemap]
    sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    spec = SourceSpec(
        site=SITE, collection=COLLECTION, kind="sitemap", location=site.page_url("/nope.xml"), prune=True
    )
    report = sync_collection(fast, SITE, COLLECTION, [spec], embedder=minilm)
    assert not report.ok and not report.pruned
    assert "HTTP 404" in (report.sources[0].error or "")
    assert "not pruned" in (report.prune_note or "")
    assert set(_doc_ids(fast)) == set(urls)


def test_validators_unused_when_the_table_lost_the_document(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    urls = [site.page_url(site.in_sitemap[0])]
    sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    store = VectorStore(fast)
    store.delete_documents(store.open_table(SITE, COLLECTION), urls)
    report = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls)], embedder=minilm)
    assert report.sources[0].fetched == 1 and report.sources[0].added == 1  # not a 304 into nothing
    assert site.count(site.in_sitemap[0], 304) == 0


def test_adding_a_url_to_the_list_keeps_the_others_validators(
    fast: Settings, site: DocSite, minilm: Embedder
) -> None:
    urls = [site.page_url(p) for p in site.in_sitemap]
    sync_collection(fast, SITE, COLLECTION, [_url_spec(urls[:2])], embedder=minilm)
    report = sync_collection(fast, SITE, COLLECTION, [_url_spec(urls[:3])], embedder=minilm)
    src = report.sources[0]
    assert (src.fetched, src.unchanged, src.added) == (1, 2, 1)
    assert site.total(304) == 2
