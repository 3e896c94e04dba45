"""Real files in the formats ingest reads, made from the shared data: HTML pages, PDFs, DOCX.

Tests and ``benchmarks/ingest.py`` both need web pages and PDFs with known content, so they are made
here, from real text, by real writers: an HTML page is a FastAPI docs Markdown page rendered by
``markdown-it`` inside a site's boilerplate (navigation, sidebar, cookie banner, footer, scripts);
a PDF is FinanceBench filing pages written by ``fpdf2``, one corpus page per PDF page. The shared
data is read by path and never copied into the repository.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fpdf import FPDF
from lxml import html as lxml_html
from markdown_it import MarkdownIt

#: Boilerplate blocks a docs site wraps around every page: what HTML extraction must drop.
NAV = ["Home", "Features", "Pricing", "Customers", "Blog", "Careers", "Contact sales", "Sign in"]
SIDEBAR_HEADING = "More in this guide"
COOKIE = (
    "We use cookies and similar technologies to improve your browsing experience, personalise "
    "content and analyse our traffic. By clicking accept you consent to our use of cookies."
)
NEWSLETTER = "Subscribe to our newsletter for product updates, webinars and release announcements."
FOOTER = "Copyright 2024 Builddaily Inc. All rights reserved. Privacy policy. Terms of service. Status."
SCRIPT = 'window.dataLayer = window.dataLayer || []; gtag("config", "UA-000000-1"); trackPageview();'
_BLOCK_TAGS = {"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "td", "th", "blockquote"}


@dataclass(frozen=True)
class RenderedPage:
    """An HTML page and what is on it: the body's text blocks and the boilerplate's."""

    html: str
    title: str
    body_blocks: list[str]
    boilerplate_blocks: list[str]


def clean_mkdocs(markdown: str) -> str:
    """FastAPI's mkdocs extensions out of a page: ``{ #anchor }``, ``{* include *}``, ``///`` markers."""
    text = re.sub(r"\s*\{\s*#[\w-]+\s*\}", "", markdown)
    lines = [ln for ln in text.splitlines() if not re.match(r"^\s*(\{\*.*\*\}|///)", ln)]
    return "\n".join(lines)


def render_html_page(markdown: str, *, title: str, siblings: Sequence[str] = ()) -> RenderedPage:
    """A docs page as a site would serve it: the rendered Markdown in ``<main>``, boilerplate around it.

    ``siblings`` are other pages' titles, listed in the sidebar (link-dense, like a real docs nav).
    """
    body = MarkdownIt("commonmark").enable("table").render(clean_mkdocs(markdown))
    side = [SIDEBAR_HEADING, *siblings]
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Builddaily Docs</title>
<link rel="canonical" href="https://docs.builddaily.example/{_slug(title)}/">
<meta property="article:published_time" content="2024-02-03T09:00:00Z">
<meta property="article:modified_time" content="2024-05-06T10:00:00Z">
<script>{SCRIPT}</script><style>body {{ font-family: sans-serif; }}</style></head>
<body>
<header><nav><ul>{"".join(f'<li><a href="/{_slug(n)}">{n}</a></li>' for n in NAV)}</ul></nav></header>
<div class="cookie-banner"><p>{COOKIE}</p><button>Accept</button></div>
<aside class="sidebar"><h4>{SIDEBAR_HEADING}</h4><ul>
{"".join(f'<li><a href="/docs/{_slug(s)}">{s}</a></li>' for s in siblings)}</ul></aside>
<main><article>
{body}
</article></main>
<footer><p>{NEWSLETTER}</p><p>{FOOTER}</p></footer>
<script>{SCRIPT}</script>
</body></html>"""
    boilerplate = [*NAV, *side, COOKIE, NEWSLETTER, FOOTER, SCRIPT]
    return RenderedPage(html, title, text_blocks(body), boilerplate)


def text_blocks(fragment: str) -> list[str]:
    """The leaf text blocks (paragraphs, list items, headings, cells, code) of an HTML fragment."""
    root = lxml_html.fragment_fromstring(fragment, create_parent="div")
    blocks = []
    for elem in root.iter(*_BLOCK_TAGS):
        if any(d.tag in _BLOCK_TAGS for d in elem.iterdescendants()):
            continue
        text = squash(elem.text_content())
        if text:
            blocks.append(text)
    return blocks


def fastapi_pages(data_dir: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(title, Markdown) of the shared FastAPI docs pages, sorted by path (release notes left out)."""
    root = data_dir / "fastapi_docs" / "pages"
    paths = [p for p in sorted(root.rglob("*.md")) if p.name != "release-notes.md"]
    return [fastapi_page(data_dir, p.relative_to(root).as_posix()) for p in paths[:limit]]


def fastapi_page(data_dir: Path, name: str) -> tuple[str, str]:
    """(title, Markdown) of one FastAPI docs page, e.g. ``tutorial/first-steps.md``."""
    text = (data_dir / "fastapi_docs" / "pages" / name).read_text(encoding="utf-8")
    first = next((ln for ln in text.splitlines() if ln.startswith("# ")), f"# {Path(name).stem}")
    return clean_mkdocs(first[2:]).strip(), text


@dataclass(frozen=True)
class FilingPage:
    page_id: str
    doc_name: str
    text: str


def financebench_filings(data_dir: Path) -> dict[str, list[FilingPage]]:
    """FinanceBench corpus pages grouped by filing, in page order."""
    filings: dict[str, list[tuple[int, FilingPage]]] = defaultdict(list)
    with (data_dir / "financebench" / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            meta = row["metadata"]
            page = FilingPage(row["_id"], meta["doc_name"], row["text"])
            filings[meta["doc_name"]].append((int(meta["page_num0"]), page))
    return {
        name: [p for _, p in sorted(pages, key=lambda x: x[0])] for name, pages in sorted(filings.items())
    }


def text_pdf(pages: Sequence[str], *, title: str = "") -> bytes:
    """A PDF with one page per text, each page tall enough for its lines (never flowing onto the next).

    Core Helvetica covers Latin-1 only, so typographic quotes and dashes are written as their ASCII
    forms and other characters outside Latin-1 as ``?`` (what a PDF of these pages would read as).
    """
    pdf = FPDF(unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=8)
    for text in pages:
        lines = [latin1(ln.strip()) for ln in text.splitlines() if ln.strip()]
        wrapped = sum(max(1, len(ln) // 120 + 1) for ln in lines)
        pdf.add_page(format=(210, max(297, 20 + 3.6 * wrapped)))
        for ln in lines:
            pdf.multi_cell(0, 3.5, ln, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def latin1(text: str) -> str:
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2013", "-")):
        text = text.replace(a, b)
    text = text.replace("\u2014", "-").replace("\u2022", "*").replace("\u00a0", " ")
    return text.encode("latin-1", "replace").decode("latin-1")


def squash(text: str) -> str:
    return " ".join(text.split())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
