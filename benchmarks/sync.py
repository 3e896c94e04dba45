"""`rag-app sync` cost on a sitemap: the 153 shared FastAPI docs pages on a loopback site.

    python benchmarks/sync.py

Serves the pages (rendered to HTML by ``tests/doc_site.py``, the test suite's loopback site) and
syncs them through their sitemap four times into a temp data dir: a dry run (fetch and parse, no
embedding), a first real run, a second run with every ``<lastmod>`` unchanged (nothing is
requested), and a third after bumping every ``<lastmod>`` (every page answers 304). Prints the
seconds and counts of each run. The bundled MiniLM embeds; absolute seconds depend on the machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.sync import sync_collection
from rag_app.models.embeddings import load_embedder
from tests.doc_site import DOCS, DocSite, Page, SiteServer, render_page


def main() -> None:
    site = DocSite()
    for md in sorted(DOCS.rglob("*.md")):
        site.pages["/docs/" + md.relative_to(DOCS).with_suffix(".html").as_posix()] = Page(render_page(md)[1])
    site.in_sitemap = list(site.pages)
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()), lm_model=None, fetch_per_host_rps=1000.0, fetch_concurrency=8
    )
    embedder = load_embedder(settings)
    with SiteServer(site):
        spec = SourceSpec(
            site="builddaily", collection="resources", kind="sitemap", location=site.url + "/sitemap.xml"
        )

        def run(label: str, **options: bool) -> None:
            t0 = time.perf_counter()
            report = sync_collection(
                settings, "builddaily", "resources", [spec], embedder=embedder, **options
            )
            s = report.sources[0]
            print(
                f"{label}: {time.perf_counter() - t0:.2f} s, fetched {s.fetched}, unchanged {s.unchanged}, "
                f"added {s.added}, chunks {s.chunks_written}, failed {len(s.failed)}",
                flush=True,
            )

        run("dry run (fetch + parse, no embedding)", dry_run=True)
        run("first run")
        run("second run (lastmod unchanged)")
        for page in site.pages.values():
            page.lastmod = "2026-03-01"
        run("third run (lastmod bumped)")
        print(f"pages answered 304 (not modified): {site.total(304)}")


if __name__ == "__main__":
    main()
