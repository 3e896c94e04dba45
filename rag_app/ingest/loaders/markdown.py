"""Markdown files -> one Document each: YAML front matter, and sections split on headings.

Sections keep their heading path so a chunk never straddles two sections and carries its context
("Title > Install > Docker") into the embedding. Headings inside code fences are not headings. Each
section is a verbatim slice of the document text and records where it starts, so chunk offsets
point at the exact characters a site highlights.

Front matter is real YAML (``yaml.safe_load``): nested mappings, quoting, lists and dates behave as
any YAML tool reads them; a malformed block is an error naming the file and line, never ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document, Section
from rag_app.ingest.loaders.fields import typed_fields

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_FRONT_OPEN = "---"
_FRONT_CLOSE = ("---", "...")


def parse_markdown(text: str, *, path: Path | str, doc_id: str, source: str) -> Document:
    """One Document per file; front matter ``id``, ``title`` and ``url``/``source`` override the defaults."""
    meta, body = front_matter(text, path)
    body = body.strip()
    sections = split_sections(body)
    title = str(meta.pop("title", "") or "")
    if not title:
        first = next((s.heading_path[0] for s in sections if s.heading_path), "")
        title = first or doc_id.rsplit("/", 1)[-1].replace("-", " ").replace("_", " ")
    own_id = meta.pop("id", None)
    own_source = meta.pop("url", None) or meta.pop("source", None)
    fields = typed_fields(meta, path=path, line=1)
    return Document(
        id=str(own_id) if own_id not in (None, "") else doc_id,
        title=title,
        text=body,
        source=str(own_source) if own_source else source,
        sections=sections,
        **fields,
    )


def split_sections(body: str) -> list[Section]:
    """Sections of ``body`` split on headings (outside code fences), each a stripped slice with its start."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    span: list[int] = []  # [start, end) of the current section's lines in body
    in_fence = False

    def flush() -> None:
        if span:
            raw = body[span[0] : span[1]]
            content = raw.strip()
            if content:
                start = span[0] + (len(raw) - len(raw.lstrip()))
                sections.append(Section(heading_path=[h for _, h in path], text=content, start=start))
        span.clear()

    pos = 0
    for line in body.splitlines(keepends=True):
        line_start, pos = pos, pos + len(line)
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line.rstrip("\r\n"))
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, match.group(2).strip()))
            continue
        if not span:
            span[:] = [line_start, pos]
        span[1] = pos
    flush()
    return sections


def front_matter(text: str, path: Path | str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a file that may open with a ``---`` YAML block closed by ``---`` or ``...``."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != _FRONT_OPEN:
        return {}, text
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() in _FRONT_CLOSE:
            block = "".join(lines[1 : number - 1])
            return _load_yaml(block, path), "".join(lines[number:])
    raise LoaderError(
        path, "front matter starts with '---' but never closes (add a '---' line after it)", line=1
    )


def _load_yaml(block: str, path: Path | str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1  # the block starts on the file's line 2
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LoaderError(path, f"front matter is not valid YAML: {problem}", line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoaderError(
            path,
            f"front matter must be a YAML mapping of 'key: value' lines, not a {type(data).__name__}",
            line=2,
        )
    return {str(k): v for k, v in data.items()}
