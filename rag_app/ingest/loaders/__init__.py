"""Files -> Documents: Markdown, plain text, JSONL, CSV and BEIR layout (one module per format).

Loading is all-or-nothing per call: every file is parsed and validated before ingest writes a row, so
a malformed line can never leave half a corpus in the index. Errors name the file and the line. With
``on_error="skip"`` bad records are reported and left out instead of stopping the load. A file over
``max_bytes`` is refused before it is read (a file is read whole: that is what would exhaust memory).

This ``__init__`` is the dispatch (paths -> files -> the parser for each suffix); the parsers live in
:mod:`.text`, :mod:`.markdown` and :mod:`.tabular`. ``__all__`` is what callers outside ingest use
(``read_text`` is :mod:`.text`'s, re-exported for the CLI's ``--file`` inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.markdown import MARKDOWN_SUFFIXES, parse_markdown
from rag_app.ingest.loaders.tabular import parse_csv, parse_jsonl
from rag_app.ingest.loaders.text import TEXT_SUFFIXES, parse_text, read_text

__all__ = ["LoadResult", "OnError", "load_file", "load_paths", "read_text"]

OnError = Literal["stop", "skip"]

SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | {".jsonl", ".csv"}


@dataclass
class LoadResult:
    """What a load produced: the documents, and the records skipped under ``on_error='skip'``."""

    documents: list[Document] = field(default_factory=list)
    errors: list[LoaderError] = field(default_factory=list)
    files: int = 0


def load_paths(
    paths: Iterable[Path | str],
    *,
    on_error: OnError = "stop",
    csv_columns: dict[str, str] | None = None,
    max_bytes: int | None = None,
) -> LoadResult:
    """Load every supported file under ``paths`` (files or folders, recursively, sorted).

    A folder holding ``corpus.jsonl`` with ``queries.jsonl`` or ``qrels/`` is read as BEIR layout
    (only the corpus is indexed). Duplicate document ids across files are an error: the second
    would silently replace the first in the index.
    """
    result = LoadResult()
    seen: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LoaderError(path, "no such file or directory")
        for file, root in _expand(path):
            result.files += 1
            docs = load_file(
                file,
                root=root,
                on_error=on_error,
                csv_columns=csv_columns,
                errors=result.errors,
                max_bytes=max_bytes,
            )
            for doc in docs:
                if doc.id in seen:
                    err = LoaderError(
                        file, f"duplicate document id {doc.id!r} (first seen in {seen[doc.id]})"
                    )
                    if on_error == "stop":
                        raise err
                    result.errors.append(err)
                    continue
                seen[doc.id] = str(file)
                result.documents.append(doc)
    return result


def _expand(path: Path) -> Iterator[tuple[Path, Path]]:
    """Yield (file, root) pairs; root is what Markdown/text ids are made relative to."""
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise LoaderError(
                path,
                f"unsupported file type {path.suffix!r}; supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}",
            )
        yield path, path.parent
        return
    if is_beir_dir(path):
        yield path / "corpus.jsonl", path
        return
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUPPORTED_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    for file in files:
        yield file, path


def is_beir_dir(path: Path) -> bool:
    """BEIR layout: ``corpus.jsonl`` next to ``queries.jsonl`` or ``qrels/`` (eval sets, not documents)."""
    return (path / "corpus.jsonl").is_file() and (
        (path / "queries.jsonl").is_file() or (path / "qrels").is_dir()
    )


def load_file(
    path: Path,
    *,
    root: Path | None = None,
    on_error: OnError = "stop",
    csv_columns: dict[str, str] | None = None,
    errors: list[LoaderError] | None = None,
    max_bytes: int | None = None,
) -> list[Document]:
    """Load one file by its suffix; a file over ``max_bytes`` is an error naming its size and the limit."""
    errors = errors if errors is not None else []
    suffix = path.suffix.lower()
    check_file_size(path, max_bytes)
    text = read_text(path)
    if suffix in MARKDOWN_SUFFIXES:
        return [parse_markdown(text, path=path, root=root or path.parent)]
    if suffix in TEXT_SUFFIXES:
        return [parse_text(text, path=path, root=root or path.parent)]
    if suffix == ".jsonl":
        return list(_collect(parse_jsonl(text, path=path), on_error, errors))
    if suffix == ".csv":
        return list(_collect(parse_csv(text, path=path, columns=csv_columns), on_error, errors))
    raise LoaderError(path, f"unsupported file type {suffix!r}")


def _collect(
    records: Iterator[Document | LoaderError], on_error: OnError, errors: list[LoaderError]
) -> Iterator[Document]:
    for record in records:
        if isinstance(record, LoaderError):
            if on_error == "stop":
                raise record
            errors.append(record)
        else:
            yield record


def check_file_size(path: Path, max_bytes: int | None) -> None:
    """Refuse a file larger than ``max_bytes`` (``RAG_MAX_DOCUMENT_BYTES``) before reading it."""
    if max_bytes is None:
        return
    size = path.stat().st_size
    if size > max_bytes:
        raise LoaderError(
            path,
            f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes (RAG_MAX_DOCUMENT_BYTES); "
            "split it, or raise the limit",
        )
