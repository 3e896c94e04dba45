"""Files -> Documents: Markdown, plain text, JSONL, CSV and BEIR layout.

Loading is all-or-nothing per call: every file is parsed and validated before ingest writes a row, so
a malformed line can never leave half a corpus in the index. Errors name the file and the line. With
``on_error="skip"`` bad records are reported and left out instead of stopping the load. A file over
``max_bytes`` is refused before it is read (a file is read whole: that is what would exhaust memory).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document, Section

OnError = Literal["stop", "skip"]

MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text"}
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | {".jsonl", ".csv"}
#: Fields with a typed meaning; everything else a record carries is kept as metadata.
KNOWN_FIELDS = {"id", "_id", "title", "text", "date", "tickers", "tags", "url", "source", "metadata"}
DEFAULT_CSV_COLUMNS = {
    "id": "id",
    "title": "title",
    "text": "text",
    "date": "date",
    "tickers": "tickers",
    "tags": "tags",
}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass
class LoadResult:
    """What a load produced: the documents, and the records skipped under ``on_error='skip'``."""

    documents: list[Document] = field(default_factory=list)
    errors: list[LoaderError] = field(default_factory=list)
    files: int = 0


# --------------------------------------------------------------------------------------------- entry


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
            try:
                docs = load_file(
                    file,
                    root=root,
                    on_error=on_error,
                    csv_columns=csv_columns,
                    errors=result.errors,
                    max_bytes=max_bytes,
                )
            except LoaderError:
                raise
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


# --------------------------------------------------------------------------------------- markdown


def parse_markdown(text: str, *, path: Path, root: Path) -> Document:
    """One Document per file; its sections (split on headings outside code fences) keep their paths."""
    meta, body, body_line = _front_matter(text, path)
    sections = split_sections(body)
    title = str(meta.pop("title", "") or "")
    if not title:
        first = next((s.heading_path[0] for s in sections if s.heading_path), "")
        title = first or path.stem.replace("-", " ").replace("_", " ")
    doc_id = str(meta.pop("id", "") or _relative_id(path, root))
    source = str(meta.pop("url", "") or meta.pop("source", "") or path)
    fields = _typed_fields(meta, path=path, line=1 if body_line > 1 else None)
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


def parse_text(text: str, *, path: Path, root: Path) -> Document:
    title = next((ln.strip() for ln in text.splitlines() if ln.strip()), path.stem)[:200]
    return Document(id=_relative_id(path, root), title=title, text=text.strip(), source=str(path))


def _relative_id(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


# ------------------------------------------------------------------------------------ jsonl / csv


def parse_jsonl(text: str, *, path: Path) -> Iterator[Document | LoaderError]:
    """Records with ``id``/``_id``, ``title``, ``text``; other fields and ``metadata`` become metadata."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield LoaderError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", line=number)
            continue
        if not isinstance(record, dict):
            yield LoaderError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            continue
        try:
            yield record_to_document(record, path=path, line=number)
        except LoaderError as exc:
            yield exc


def parse_csv(
    text: str, *, path: Path, columns: dict[str, str] | None = None
) -> Iterator[Document | LoaderError]:
    """CSV with a header. ``columns`` maps our fields (id, title, text, date, tickers, tags) to headers.

    List cells (tickers, tags) are split on ``;`` or ``|``. Unmapped columns become metadata.
    """
    mapping = {**DEFAULT_CSV_COLUMNS, **(columns or {})}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    for required in ("id", "text"):
        if mapping[required] not in header:
            yield LoaderError(
                path,
                f"CSV header has no {mapping[required]!r} column for {required!r} "
                f"(header: {', '.join(header)}); pass a column mapping",
                line=1,
            )
            return
    reverse = {v: k for k, v in mapping.items()}
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield LoaderError(path, f"expected {len(header)} columns, found {len(row)}", line=number)
            continue
        record: dict[str, Any] = {}
        for name, cell in zip(header, row, strict=True):
            key = reverse.get(name, name)
            if key in ("tickers", "tags"):
                record[key] = [v.strip() for v in re.split(r"[;|]", cell) if v.strip()]
            else:
                record[key] = cell
        try:
            yield record_to_document(record, path=path, line=number)
        except LoaderError as exc:
            yield exc


def record_to_document(record: dict[str, Any], *, path: Path, line: int | None) -> Document:
    raw_id = record.get("id", record.get("_id"))
    if raw_id is None or str(raw_id).strip() == "":
        raise LoaderError(path, "record has no 'id' or '_id'", line=line)
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise LoaderError(path, f"record {raw_id!r} has no non-empty 'text'", line=line)
    nested = record.get("metadata") or {}
    if not isinstance(nested, dict):
        raise LoaderError(path, "'metadata' must be a JSON object", line=line)
    meta: dict[str, Any] = {**nested, **{k: v for k, v in record.items() if k not in KNOWN_FIELDS}}
    for key in ("date", "tickers", "tags"):
        if key in record:
            meta[key] = record[key]
    source = record.get("url") or record.get("source") or nested.get("url") or str(path)
    fields = _typed_fields(meta, path=path, line=line)
    return Document(
        id=str(raw_id), title=str(record.get("title") or ""), text=text.strip(), source=str(source), **fields
    )


# ----------------------------------------------------------------------------------- typed fields


def _typed_fields(meta: dict[str, Any], *, path: Path, line: int | None) -> dict[str, Any]:
    """Pull date, tickers and tags out of free metadata with their proper types."""
    meta = dict(meta)
    date = parse_date(meta.pop("date", None), path=path, line=line)
    tickers = [t.upper() for t in _as_list(meta.pop("tickers", None) or meta.pop("ticker", None))]
    tags = [t.lower() for t in _as_list(meta.pop("tags", None))]
    return {"date": date, "tickers": tickers, "tags": tags, "metadata": meta}


def parse_date(value: Any, *, path: Path, line: int | None) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        raise LoaderError(path, f"date {text!r} is not ISO format (YYYY-MM-DD)", line=line) from None


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[,;|]", value) if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value)]
