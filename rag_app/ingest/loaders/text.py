"""Plain text files: ``.txt`` -> one Document; and :func:`read_text`, strict decoding of a file on disk.

Decoding itself (BOM, declared charset, else strict UTF-8) is :mod:`.encoding`'s; undecodable bytes are
an error naming the byte offset and line rather than being replaced.
"""

from __future__ import annotations

from pathlib import Path

from rag_app.core.types import Document
from rag_app.ingest.loaders.encoding import decode_text


def read_text(path: Path) -> str:
    """Read a text file: a BOM decides, else strict UTF-8; bad bytes are an error naming offset and line."""
    return decode_text(path.read_bytes(), name=path)


def parse_text(text: str, *, path: Path | str, doc_id: str, source: str) -> Document:
    """One Document per file, titled by its first non-blank line (else the id's last part)."""
    fallback = doc_id.rsplit("/", 1)[-1]
    title = next((ln.strip() for ln in text.splitlines() if ln.strip()), fallback)[:200]
    return Document(id=doc_id, title=title, text=text.strip(), source=source)


def relative_id(path: Path, root: Path) -> str:
    """A file's document id: its path under ``root``, without the suffix (stable across machines)."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()
