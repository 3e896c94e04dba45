"""Plain text files: strict UTF-8 reading (shared by every format) and ``.txt`` -> one Document.

Undecodable bytes are an error naming the line rather than being replaced: a mangled character in an
indexed passage would be quoted back to users as if it were the source's.
"""

from __future__ import annotations

from pathlib import Path

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document

TEXT_SUFFIXES = {".txt", ".text"}


def read_text(path: Path) -> str:
    """Read UTF-8 (a BOM is fine); undecodable bytes are an error naming the line, never mangled."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LoaderError(
            path,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-encode the file as UTF-8",
            line=line,
        ) from None


def parse_text(text: str, *, path: Path, root: Path) -> Document:
    """One Document per file, titled by its first non-blank line, with an id relative to ``root``."""
    title = next((ln.strip() for ln in text.splitlines() if ln.strip()), path.stem)[:200]
    return Document(id=relative_id(path, root), title=title, text=text.strip(), source=str(path))


def relative_id(path: Path, root: Path) -> str:
    """A file's document id: its path under ``root``, without the suffix (stable across machines)."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()
