"""Markdown files -> one Document each, with sections split on headings and simple front matter.

Sections keep their heading path so a chunk never straddles two sections and carries its context
("Title > Install > Docker") into the embedding. Headings inside code fences are not headings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document, Section
from rag_app.ingest.loaders.fields import typed_fields
from rag_app.ingest.loaders.text import relative_id

MARKDOWN_SUFFIXES = {".md", ".markdown"}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse_markdown(text: str, *, path: Path, root: Path) -> Document:
    """One Document per file; its sections (split on headings outside code fences) keep their paths."""
    meta, body, body_line = _front_matter(text, path)
    sections = split_sections(body)
    title = str(meta.pop("title", "") or "")
    if not title:
        first = next((s.heading_path[0] for s in sections if s.heading_path), "")
        title = first or path.stem.replace("-", " ").replace("_", " ")
    doc_id = str(meta.pop("id", "") or relative_id(path, root))
    source = str(meta.pop("url", "") or meta.pop("source", "") or path)
    fields = typed_fields(meta, path=path, line=1 if body_line > 1 else None)
    return Document(id=doc_id, title=title, text=body.strip(), source=source, sections=sections, **fields)


def split_sections(body: str) -> list[Section]:
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        content = "\n".join(lines).strip()
        if content:
            sections.append(Section(heading_path=[h for _, h in path], text=content))
        lines.clear()

    for line in body.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, match.group(2).strip()))
            continue
        lines.append(line)
    flush()
    return sections


def _front_matter(text: str, path: Path) -> tuple[dict[str, Any], str, int]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, text, 1
    meta: dict[str, Any] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            return meta, "\n".join(lines[number:]), number + 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise LoaderError(path, f"front matter line is not 'key: value': {line.strip()!r}", line=number)
        meta[key.strip()] = _scalar_or_list(value.strip())
    raise LoaderError(path, "front matter starts with '---' but never closes", line=1)


def _scalar_or_list(value: str) -> Any:
    if value.startswith("[") and value.endswith("]"):
        return [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
    return value.strip("'\"")
