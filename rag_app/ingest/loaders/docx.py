"""Word (.docx) files -> one Document: paragraphs and tables in order, heading styles as heading paths.

Editors structure books and articles with Word's heading styles ("Heading 1", "Heading 2", ...), so
those become the heading path of the sections under them, exactly like Markdown headings; the
"Title" style names the document. Tables are read as text rows (``cell | cell | cell``), a merged
cell once per row. Paragraphs and tables keep the order they have in the file.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from lxml import etree

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.sections import assemble_blocks

_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)


def parse_docx(data: bytes, *, path: Path | str, doc_id: str, source: str) -> Document:
    """One Document; a file with no text in its body is an error, not an empty document."""
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, etree.LxmlError) as exc:
        raise LoaderError(
            path, f"not a readable .docx file ({exc}); save it again from Word as .docx"
        ) from None
    title = ""
    blocks: list[tuple[int, str]] = []
    for item in document.iter_inner_content():  # paragraphs and tables in file order
        if isinstance(item, Table):
            blocks.append((0, "\n".join(table_rows(item))))
            continue
        text = " ".join(item.text.split())
        style = (item.style.name if item.style is not None else "") or ""
        if style.lower() == "title" and not title:
            title = text
            continue
        match = _HEADING_STYLE.fullmatch(style.strip())
        blocks.append((int(match.group(1)) if match else 0, text))
    body, sections = assemble_blocks(blocks)
    if not body.strip():
        raise LoaderError(path, "the .docx has no text in its body (only images or empty paragraphs?)")
    props = document.core_properties
    title = (
        title
        or (props.title or "").strip()
        or next((s.heading_path[0] for s in sections if s.heading_path), "")
    )
    metadata: dict[str, Any] = {}
    if props.author:
        metadata["author"] = props.author
    for key, value in (("created", props.created), ("modified", props.modified)):
        if value is not None:
            metadata[key] = value.date().isoformat()
    return Document(
        id=doc_id,
        title=title or doc_id.rsplit("/", 1)[-1],
        text=body,
        source=source,
        sections=sections,
        metadata=metadata,
    )


def table_rows(table: Table) -> list[str]:
    """Each row as ``a | b | c``; a cell merged across columns is listed once."""
    rows = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:
                continue
            previous = cell._tc
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return rows
