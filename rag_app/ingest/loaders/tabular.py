"""Record files -> one Document per record: JSONL (also a BEIR ``corpus.jsonl``) and CSV with a header.

Parsers yield a :class:`LoaderError` in place of a bad record instead of raising, so the caller
decides (``on_error``) whether one malformed line stops the load or is reported and left out.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders.fields import typed_fields

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


def parse_jsonl(
    text: str, *, path: Path | str, source: str | None = None
) -> Iterator[Document | LoaderError]:
    """Records with ``id``/``_id``, ``title``, ``text``; other fields and ``metadata`` become metadata.

    ``source`` (default: ``path``) is recorded on records that name no ``url``/``source`` of their own.
    """
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
            yield record_to_document(record, path=path, line=number, source=source)
        except LoaderError as exc:
            yield exc


def parse_csv(
    text: str, *, path: Path | str, columns: dict[str, str] | None = None, source: str | None = None
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
            yield record_to_document(record, path=path, line=number, source=source)
        except LoaderError as exc:
            yield exc


def record_to_document(
    record: dict[str, Any], *, path: Path | str, line: int | None, source: str | None = None
) -> Document:
    """One JSONL/CSV record -> a Document; a missing id or empty text is an error naming the line."""
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
    own = record.get("url") or record.get("source") or nested.get("url") or source or str(path)
    fields = typed_fields(meta, path=path, line=line)
    return Document(
        id=str(raw_id), title=str(record.get("title") or ""), text=text.strip(), source=str(own), **fields
    )
