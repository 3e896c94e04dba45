"""A real loopback web site for the URL and sitemap source tests: HTML pages rendered from the shared
FastAPI docs (Markdown -> HTML with markdown-it-py, wrapped in navigation and footer boilerplate),
served by :mod:`http.server` in a thread on 127.0.0.1.

It behaves like a real site where the tests need it to: ``robots.txt`` disallows ``/private/``,
every page has a strong ``ETag`` and a ``Last-Modified`` and answers ``If-None-Match`` with 304,
``/old/<page>`` redirects (301) to ``/docs/<page>``, unknown paths are 404, ``/sitemap.xml`` is a
sitemap index over ``/sitemap-docs.xml`` (with ``<lastmod>``), and ``flaky`` paths answer 503 once.
Every request is counted per (path, status), so tests can show what was (not) fetched.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from markdown_it import MarkdownIt

from tests.conftest import SHARED_DATA

DOCS = SHARED_DATA / "fastapi_docs" / "pages"
#: Small real pages: enough text for a few chunks each, quick to embed.
PAGE_FILES = ("environment-variables.md", "external-links.md", "virtual-environments.md", "management.md")

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>window.analytics = {{track: function() {{}}}};</script></head>
<body><nav><a href="/">Home</a> | <a href="/docs/">Docs</a> | <a href="/blog/">Blog</a></nav>
<main><article>{body}</article></main>
<footer>Copyright FastAPI docs site, rendered for tests. <a href="/privacy">Privacy</a></footer>
</body></html>"""


def render_page(markdown_file: Path) -> tuple[str, bytes]:
    """``(title, html bytes)`` of one shared FastAPI docs page."""
    text = markdown_file.read_text(encoding="utf-8")
    title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "page")
    body = MarkdownIt().render(text)
    return title, TEMPLATE.format(title=title, body=body).encode("utf-8")


@dataclass
class Page:
    body: bytes
    lastmod: str = "2026-01-01"
    content_type: str = "text/html; charset=utf-8"

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class DocSite:
    """The site's content (mutable between runs) and its request log."""

    pages: dict[str, Page] = field(default_factory=dict)
    in_sitemap: list[str] = field(default_factory=list)
    flaky: set[str] = field(default_factory=set)
    hits: Counter[tuple[str, int]] = field(default_factory=Counter)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def page_url(self, path: str) -> str:
        return self.url + path

    def count(self, path: str, status: int | None = None) -> int:
        with self.lock:
            return sum(n for (p, s), n in self.hits.items() if p == path and status in (None, s))

    def total(self, status: int) -> int:
        with self.lock:
            return sum(n for (_, s), n in self.hits.items() if s == status)

    def sitemap(self) -> bytes:
        entries = "".join(
            f"<url><loc>{self.url}{p}</loc><lastmod>{self.pages[p].lastmod}</lastmod></url>"
            for p in self.in_sitemap
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
        ).encode()

    def sitemap_index(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{self.url}/sitemap-docs.xml</loc></sitemap></sitemapindex>"
        ).encode()


def build_site() -> DocSite:
    """The four shared docs pages under ``/docs/<name>.html`` plus a disallowed ``/private/`` page."""
    site = DocSite()
    for name in PAGE_FILES:
        _, body = render_page(DOCS / name)
        site.pages[f"/docs/{name.removesuffix('.md')}.html"] = Page(body)
    _, secret = render_page(DOCS / "translations.md")
    site.pages["/private/translations.html"] = Page(secret)
    site.in_sitemap = [p for p in site.pages if p.startswith("/docs/")]
    return site


class _SiteHTTPServer(ThreadingHTTPServer):
    """The HTTP server, holding the :class:`DocSite` its handler serves."""

    daemon_threads = True

    def __init__(self, site: DocSite) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site


class _Handler(BaseHTTPRequestHandler):
    server: _SiteHTTPServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        site = self.server.site
        with site.lock:
            site.hits[(self.path, status)] += 1
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        site, path = self.server.site, self.path
        if path == "/robots.txt":
            return self._send(200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"})
        if path == "/sitemap.xml":
            return self._send(200, site.sitemap_index(), {"Content-Type": "application/xml"})
        if path == "/sitemap-docs.xml":
            return self._send(200, site.sitemap(), {"Content-Type": "application/xml"})
        if path.startswith("/old/"):
            return self._send(301, headers={"Location": "/docs/" + path.removeprefix("/old/")})
        with site.lock:
            flaky = path in site.flaky
            site.flaky.discard(path)
        if flaky:
            return self._send(503, b"try again", {"Retry-After": "0"})
        page = site.pages.get(path)
        if page is None:
            return self._send(404, b"not found", {"Content-Type": "text/plain"})
        if self.headers.get("If-None-Match") == page.etag:
            return self._send(304, headers={"ETag": page.etag})
        return self._send(
            200,
            page.body,
            {
                "Content-Type": page.content_type,
                "ETag": page.etag,
                "Last-Modified": formatdate(1767225600, usegmt=True),
            },
        )


class SiteServer:
    """``with SiteServer(site) as url:`` serves ``site`` on 127.0.0.1 until the block ends."""

    def __init__(self, site: DocSite) -> None:
        self.site = site
        self.httpd = _SiteHTTPServer(site)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="doc-site", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.site.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self.site.url

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)
