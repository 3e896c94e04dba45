"""HTML pages -> one Document: the main content only, sectioned by its headings, with page metadata.

Web pages are mostly navigation, footers, cookie banners and scripts; indexing those would make every
page match "pricing" or "privacy". ``trafilatura`` finds the main content. Its XML output keeps the
structure (``<head rend="h2">``, paragraphs, lists, tables), so headings become the heading path of
the sections that follow them, exactly like Markdown, and tables become ``a | b | c`` text rows.

The document text is the extracted blocks joined by blank lines (headings included, on their own
lines), and each section records where it starts in it, so chunk offsets point into that text. The
canonical URL, published and modified dates go to metadata; the published date (else the modified
one) is the document's ``date``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import trafilatura
from htmldate import find_date
from lxml import etree
from trafilatura.settings import use_config

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.fields import parse_date
from rag_app.ingest.loaders.sections import assemble_blocks

#: trafilatura's settings: no signal-based extraction timeout (ingest runs in worker threads, where
#: ``signal.alarm`` is unavailable) and no minimum size (a short page is still a page).
_CONFIG = use_config()
_CONFIG.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")
_CONFIG.set("DEFAULT", "MIN_EXTRACTED_SIZE", "1")
_HEADING_LEVEL = re.compile(r"h([1-6])")
_BLOCKS = {"p", "head", "list", "table", "code", "quote"}


def parse_html(text: str, *, path: Path | str, doc_id: str, source: str) -> Document:
    """The page's main content as one Document; a page with no extractable text is an error."""
    try:
        xml = trafilatura.extract(
            text,
            url=source if source.startswith(("http://", "https://")) else None,
            output_format="xml",
            favor_precision=True,  # measured: keeps as much body and lets no banner in (benchmarks/ingest.py)
            include_tables=True,
            include_comments=False,
            include_formatting=False,
            include_links=False,
            include_images=False,
            config=_CONFIG,
        )
    except (ValueError, etree.LxmlError) as exc:
        raise LoaderError(path, f"HTML could not be parsed ({exc}); check that the file is HTML") from None
    blocks = list(_blocks(etree.fromstring(xml.encode()))) if xml else []
    if not any(body for _, body in blocks):
        raise LoaderError(path, "no main content found in the HTML page (empty, or only navigation/scripts)")
    body, sections = assemble_blocks(blocks)
    meta = _page_metadata(text, source)
    title = meta.pop("title") or next((s.heading_path[0] for s in sections if s.heading_path), "")
    published, modified = meta.get("published"), meta.get("modified")
    return Document(
        id=doc_id,
        title=title or doc_id.rsplit("/", 1)[-1],
        text=body,
        source=source,
        date=parse_date(published or modified, path=path, line=None),
        sections=sections,
        metadata={k: v for k, v in meta.items() if v},
    )


def _blocks(root: Any) -> Any:
    """Yield (heading level, text) for headings and (0, text) for body blocks, in document order."""
    for elem in root.iter(*_BLOCKS):
        if any(parent.tag in _BLOCKS for parent in elem.iterancestors()):
            continue  # a block inside a block (a list in a table cell) is part of its parent's text
        if elem.tag == "head":
            match = _HEADING_LEVEL.fullmatch(elem.get("rend") or "")
            heading = _squash("".join(elem.itertext()))
            if heading:
                yield int(match.group(1)) if match else 2, heading
        elif elem.tag == "list":
            items = [_squash("".join(i.itertext())) for i in elem.iter("item")]
            yield 0, "\n".join(f"- {i}" for i in items if i)
        elif elem.tag == "table":
            yield 0, "\n".join(table_rows(elem))
        elif elem.tag == "code":
            yield 0, "".join(elem.itertext()).strip("\n").rstrip()
        else:
            yield 0, _squash("".join(elem.itertext()))


def table_rows(table: Any) -> list[str]:
    """A table as text rows: the cells of each row joined by `` | `` (header row included)."""
    rows = []
    for row in table.iter("row"):
        cells = [_squash("".join(c.itertext())) for c in row.iter("cell")]
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


def _page_metadata(html: str, source: str) -> dict[str, Any]:
    """Title, canonical URL, published and modified dates (ISO) from the page's markup.

    Dates come only from structured markup (meta tags, ``<time>``, JSON-LD), never from a guess over
    the page's text: "Copyright 2024" in a footer is not a publication date.
    """
    meta = trafilatura.extract_metadata(html, extensive=False)
    published = _find_date(html, original=True)
    modified = _find_date(html, original=False)
    return {
        "title": (meta.title if meta is not None else None) or "",
        "canonical_url": meta.url if meta is not None else None,
        "published": published,
        "modified": modified if modified != published else None,
    }


def _find_date(html: str, *, original: bool) -> str | None:
    try:
        return _iso(find_date(html, extensive_search=False, original_date=original))
    except ValueError:
        return None


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


def _squash(text: str) -> str:
    return " ".join(text.split())
