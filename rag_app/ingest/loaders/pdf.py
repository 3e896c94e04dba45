"""PDF files -> one Document: the text layer page by page, each page a section that knows its number.

Filings and earnings releases are PDFs, and a citation that says "page 12" is what lets a reader
check it. Every page becomes its own section (``Section.page``), so no chunk spans two pages and
every chunk carries its page. Text comes from ``pypdf``'s layout mode, which keeps a table row's
cells on one line in reading order; runs of layout padding are then squeezed to `` | `` between
cells (so a row reads ``Net income | 5,363 | 4,869``) and a single space elsewhere.

A PDF with no text layer (a scan) is an error, "no text layer (scanned?)", never an empty document:
OCR it first. Encrypted PDFs that open with the empty password are read; others are an error.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

from pypdf import PdfReader
from pypdf.errors import PdfReadError, PyPdfError

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.sections import assemble_pages

#: What a damaged or odd PDF makes pypdf raise while reading a page (its own errors and plain ones).
_READ_ERRORS = (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError)
#: Spaces of layout padding that separate two table cells (or two columns) on one line.
_CELL_GAP = re.compile(r" {3,}")
_SPACES = re.compile(r"[ \t\u00a0]{2}")
NO_TEXT_LAYER = "no text layer (scanned?)"

logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns per odd object; errors still surface


def parse_pdf(data: bytes, *, path: Path | str, doc_id: str, source: str) -> Document:
    """One Document; each page with text is a section with its 1-based ``page``."""
    reader = _open(data, path)
    pages: list[str] = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            pages.append(page_text(page))
        except _READ_ERRORS as exc:
            raise LoaderError(
                path, f"page {number} could not be read ({exc}); the PDF may be damaged"
            ) from None
    if not any(pages):
        raise LoaderError(
            path,
            f"{NO_TEXT_LAYER}: none of its {len(pages)} page(s) has extractable text; "
            "run it through OCR (e.g. ocrmypdf) and ingest the result",
        )
    text, sections = assemble_pages(pages)
    info = _info(reader)
    title = info.pop("title", "") or next(ln.strip() for ln in text.splitlines() if ln.strip())[:200]
    return Document(
        id=doc_id,
        title=title,
        text=text,
        source=source,
        sections=sections,
        metadata={"pages": len(pages), **info},
    )


def page_text(page: Any) -> str:
    """A page's text: layout extraction, padding squeezed (cells joined by `` | ``), blank lines collapsed."""
    raw = page.extract_text(extraction_mode="layout", layout_mode_space_vertically=False)
    lines = []
    for line in raw.splitlines():
        line = _CELL_GAP.sub(" | ", line.strip())
        lines.append(_SPACES.sub(" ", line))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _open(data: bytes, path: Path | str) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoaderError(
                path, "the PDF is encrypted with a password; save an unencrypted copy and ingest that"
            )
        reader.pages[0]
    except LoaderError:
        raise
    except (PdfReadError, *_READ_ERRORS) as exc:
        raise LoaderError(path, f"not a readable PDF ({exc}); check the file is a complete PDF") from None
    return reader


def _info(reader: PdfReader) -> dict[str, Any]:
    """Title, author and dates from the PDF's document information, where present."""
    try:
        info = reader.metadata
    except (PyPdfError, ValueError, KeyError, TypeError):
        return {}
    if not info:
        return {}
    out: dict[str, Any] = {}
    for key, attr in (("title", "title"), ("author", "author")):
        value = getattr(info, attr, None)
        if value and str(value).strip():
            out[key] = str(value).strip()
    for key, attr in (("created", "creation_date"), ("modified", "modification_date")):
        try:
            value = getattr(info, attr, None)
        except (ValueError, TypeError):
            value = None
        if value is not None:
            out[key] = value.date().isoformat()
    return out
