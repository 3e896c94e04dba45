"""Structured blocks -> the document text and its sections: headings (HTML, DOCX) or pages (PDF).

HTML and DOCX arrive as a sequence of headings and body blocks (paragraphs, lists, table rows), a
PDF as a sequence of page texts. The assemblers here turn them into what chunking needs: one plain
text (blocks joined by blank lines, headings on their own lines) and sections that are exact slices
of it, so chunk offsets point into the text a site shows, carrying the heading path ("Page >
Section > Subsection", embedded with every chunk) or the page number.
"""

from __future__ import annotations

from rag_app.core.types import Section


def assemble_blocks(blocks: list[tuple[int, str]]) -> tuple[str, list[Section]]:
    """Join (level, text) blocks by blank lines into the document text and its sections.

    ``level`` 1-6 is a heading (it stays in the text, on its own, and sets the heading path of what
    follows: a heading closes every open heading of its level or deeper); 0 is a body block. Body
    blocks under one heading path form one section, a verbatim slice of the text with its start.
    """
    parts: list[str] = []
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    pos = 0
    open_at: tuple[int, int] | None = None  # (index in parts, offset in the joined text) of the open section

    def close() -> None:
        if open_at is not None:
            first, start = open_at
            text = "\n\n".join(parts[first:])
            sections.append(Section(heading_path=[h for _, h in path], text=text, start=start))

    for level, text in blocks:
        if not text:
            continue
        if level:
            close()
            open_at = None
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, text))
        start = pos + (2 if parts else 0)
        if not level and open_at is None:
            open_at = (len(parts), start)
        parts.append(text)
        pos = start + len(text)
    close()
    return "\n\n".join(parts), sections


def assemble_pages(pages: list[str]) -> tuple[str, list[Section]]:
    """Join page texts by blank lines; each page with text is a section with its 1-based ``page``."""
    parts: list[str] = []
    sections: list[Section] = []
    pos = 0
    for number, text in enumerate(pages, start=1):
        if not text:
            continue
        start = pos + (2 if parts else 0)
        sections.append(Section(text=text, start=start, page=number))
        parts.append(text)
        pos = start + len(text)
    return "\n\n".join(parts), sections
