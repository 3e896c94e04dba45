"""Files and fetched bytes -> Documents: Markdown, text, JSONL, CSV, BEIR layout, HTML, PDF and DOCX.

Loading is all-or-nothing per call: every file is parsed and validated before ingest writes a row, so
a malformed line can never leave half a corpus in the index. Errors name the file and the line. With
``on_error="skip"`` bad records are reported and left out instead of stopping the load. A file over
``max_bytes`` is refused before it is read (a file is read whole: that is what would exhaust memory).

This ``__init__`` is the dispatch: :func:`load_paths` walks paths, :func:`load_file` reads one file and
:func:`load_bytes` takes content already in memory (a fetched URL, an S3 object, an upload); both go
through one :func:`parse_bytes`, which picks the parser by content type, name suffix or the bytes
themselves (:mod:`.sniff`) and decodes text formats by BOM or declared charset (:mod:`.encoding`).
The parsers live in :mod:`.text`, :mod:`.markdown`, :mod:`.tabular`, :mod:`.html`, :mod:`.pdf` and
:mod:`.docx`. ``__all__`` is what callers outside ingest use (``read_text`` is :mod:`.text`'s,
re-exported for the CLI's ``--file`` inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.docx import parse_docx
from rag_app.ingest.loaders.encoding import charset_from_content_type, decode_text
from rag_app.ingest.loaders.html import parse_html
from rag_app.ingest.loaders.markdown import parse_markdown
from rag_app.ingest.loaders.pdf import parse_pdf
from rag_app.ingest.loaders.sniff import SUFFIX_FORMATS, Format, detect_format, name_suffix
from rag_app.ingest.loaders.tabular import parse_csv, parse_jsonl
from rag_app.ingest.loaders.text import parse_text, read_text, relative_id

__all__ = [
    "SUPPORTED_SUFFIXES",
    "LoadResult",
    "OnError",
    "detect_format",
    "expand_paths",
    "load_bytes",
    "load_file",
    "load_paths",
    "read_text",
]

OnError = Literal["stop", "skip"]

#: File suffixes a folder walk picks up (and ``load_file`` accepts).
SUPPORTED_SUFFIXES = frozenset(SUFFIX_FORMATS)


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
        for file, root in expand_paths(path):
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


def expand_paths(path: Path) -> Iterator[tuple[Path, Path]]:
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
    """Load one file by its suffix; a file over ``max_bytes`` is an error naming its size and the limit.

    Under ``on_error="skip"`` with an ``errors`` list, a file that cannot be read at all (bad
    encoding, a PDF with no text layer) is appended there and yields no document.

    Its id is its path under ``root`` without the suffix (unless the file names its own, e.g. a
    Markdown front matter ``id``); its source is the path.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoaderError(path, f"unsupported file type {suffix!r}")
    try:
        check_file_size(path, max_bytes)
        docs, skipped = parse_bytes(
            path.read_bytes(),
            label=path,
            fmt=SUFFIX_FORMATS[suffix],
            default_id=relative_id(path, root or path.parent),
            source=str(path),
            on_error=on_error,
            csv_columns=csv_columns,
        )
    except LoaderError as err:
        if on_error == "stop" or errors is None:
            raise
        errors.append(err)  # under "skip" a whole unreadable file is reported like a bad record
        return []
    if errors is not None:
        errors.extend(skipped)
    return docs


def load_bytes(
    data: bytes,
    *,
    name: str,
    source: str = "",
    content_type: str | None = None,
    doc_id: str | None = None,
    on_error: OnError = "stop",
    max_bytes: int | None = None,
    csv_columns: dict[str, str] | None = None,
) -> LoadResult:
    """Parse content already in memory (a fetched URL, an S3 object, an upload) into Documents.

    The format comes from ``content_type`` when it is specific, else ``name``'s suffix, else the
    bytes (:func:`detect_format`); a ``charset`` in ``content_type`` decides how text is decoded.
    ``doc_id`` is the id of a single-document format (HTML, PDF, DOCX, Markdown, text), overriding
    any the content names itself; without it the id is ``name`` less its suffix. ``source`` (default
    ``name``) is recorded on every document that does not name its own URL. Errors name ``name``.
    Under ``on_error="skip"`` a bad record, or a whole unreadable file, is in ``errors`` instead of
    raised; the result never holds an empty document.
    """
    result = LoadResult(files=1)
    if max_bytes is not None and len(data) > max_bytes:
        err = LoaderError(
            name,
            f"content is {len(data):,} bytes, over the limit of {max_bytes:,} bytes "
            "(RAG_MAX_DOCUMENT_BYTES); split it, or raise the limit",
        )
        return _fail(result, err, on_error)
    fmt = detect_format(name, content_type, data)
    suffix = name_suffix(name)
    default_id = doc_id or (name[: -len(suffix)] if suffix and name.endswith(suffix) else name)
    try:
        docs, skipped = parse_bytes(
            data,
            label=name,
            fmt=fmt,
            default_id=default_id,
            source=source or name,
            charset=charset_from_content_type(content_type),
            on_error=on_error,
            csv_columns=csv_columns,
        )
    except LoaderError as err:
        return _fail(result, err, on_error)
    if doc_id and fmt not in ("jsonl", "csv"):
        docs = [d.model_copy(update={"id": doc_id}) for d in docs]
    if source and fmt not in ("jsonl", "csv"):
        docs = [d.model_copy(update={"source": source}) for d in docs]
    result.documents, result.errors = docs, skipped
    return result


def _fail(result: LoadResult, err: LoaderError, on_error: OnError) -> LoadResult:
    if on_error == "stop":
        raise err
    result.errors.append(err)
    return result


def parse_bytes(
    data: bytes,
    *,
    label: Path | str,
    fmt: Format,
    default_id: str,
    source: str,
    charset: str | None = None,
    on_error: OnError = "stop",
    csv_columns: dict[str, str] | None = None,
) -> tuple[list[Document], list[LoaderError]]:
    """The one dispatch behind :func:`load_file` and :func:`load_bytes`: ``fmt`` -> its parser.

    Returns the documents and the records skipped under ``on_error="skip"``; a whole file that
    cannot be read (bad encoding, a PDF without text) raises :class:`LoaderError` naming ``label``.
    """
    errors: list[LoaderError] = []
    if fmt == "pdf":
        return [parse_pdf(data, path=label, doc_id=default_id, source=source)], errors
    if fmt == "docx":
        return [parse_docx(data, path=label, doc_id=default_id, source=source)], errors
    text = decode_text(data, name=label, declared=charset, markup=fmt == "html")
    if fmt == "html":
        return [parse_html(text, path=label, doc_id=default_id, source=source)], errors
    if fmt == "markdown":
        return [parse_markdown(text, path=label, doc_id=default_id, source=source)], errors
    if fmt == "text":
        return [parse_text(text, path=label, doc_id=default_id, source=source)], errors
    if fmt == "jsonl":
        records = parse_jsonl(text, path=label, source=source)
    else:
        records = parse_csv(text, path=label, columns=csv_columns, source=source)
    return list(_collect(records, on_error, errors)), errors


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
