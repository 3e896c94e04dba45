"""A source item -> documents: a local file through :func:`load_file` (ids relative to its folder, as
``rag-app ingest FOLDER`` gives them), fetched bytes through :func:`load_bytes` (format from the
content type, the name or the bytes; the URL or object URI as the id of a single-document format).
"""

from __future__ import annotations

from rag_app.core.errors import LoaderError
from rag_app.core.types import Document
from rag_app.ingest.loaders import OnError, load_bytes, load_file
from rag_app.ingest.sources.base import SourceItem


def parse_item(
    item: SourceItem,
    *,
    max_bytes: int,
    on_error: OnError = "skip",
    csv_columns: dict[str, str] | None = None,
) -> tuple[list[Document], list[LoaderError]]:
    """The item's documents and, under ``on_error="skip"``, what could not be parsed (bad records, a
    whole unreadable file); under ``"stop"`` the first problem raises :class:`LoaderError`."""
    if item.path is not None:
        errors: list[LoaderError] = []
        try:
            docs = load_file(
                item.path,
                root=item.root,
                on_error=on_error,
                csv_columns=csv_columns,
                errors=errors,
                max_bytes=max_bytes,
            )
        except OSError as exc:  # unreadable after the walk saw it (permissions, vanished)
            err = LoaderError(item.path, f"cannot read the file ({exc.strerror or exc})")
            if on_error == "stop":
                raise err from None
            return [], [err]
        return docs, errors
    result = load_bytes(
        item.data or b"",
        name=item.name,
        source=item.source,
        content_type=item.content_type,
        doc_id=item.doc_id,
        on_error=on_error,
        max_bytes=max_bytes,
        csv_columns=csv_columns,
    )
    return result.documents, result.errors


__all__ = ["parse_item"]
