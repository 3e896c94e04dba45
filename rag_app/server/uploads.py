"""Reading an ingest request's body: size-bounded, JSON or multipart files, nothing held twice.

``POST /v1/sites/{site}/collections/{collection}/documents`` takes up to ``max_upload_bytes`` (a larger
body is a 413 naming the setting, refused by its Content-Length before anything is read, or as soon as
the stream passes the limit). Multipart files are streamed into spooled temporary files (memory up to
1 MB each, then an unlinked file on disk: nothing is left behind by a crash), so a queued job holds
its uploads on disk rather than in memory until a worker parses them.

:func:`is_upload_path` tells the body-limit middleware which requests take ``max_upload_bytes``
instead of ``max_body_bytes``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from rag_app.server.errors import ApiError

#: The form field that carries the files (repeat it for several files).
FILES_FIELD = "files"
#: Most files one request may carry.
MAX_FILES = 1000
#: A part name longer than this is refused (it becomes a document id).
MAX_NAME_CHARS = 512

_UPLOAD_PATH = re.compile(r"^/v1/sites/[^/]+/collections/[^/]+/documents/?$")


def is_upload_path(path: str) -> bool:
    """Whether ``path`` is the documents upload route (whose body limit is ``max_upload_bytes``)."""
    return bool(_UPLOAD_PATH.match(path))


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name (the document id comes from it), declared type, and content."""

    name: str
    content_type: str | None
    file: IO[bytes]

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


def too_large(limit: int, size: int | None = None) -> ApiError:
    """The 413 for a body over ``max_upload_bytes``."""
    got = f"{size:,} bytes" if size is not None else f"over {limit:,} bytes"
    return ApiError(
        413,
        "body_too_large",
        f"the upload is {got}; the limit is {limit:,} bytes (max_upload_bytes): split it into several "
        "requests, or raise the limit",
    )


async def bounded_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused (413) once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, int(declared))
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        yield chunk


async def read_bounded(request: Request, limit: int) -> bytes:
    """The whole body (a JSON request), at most ``limit`` bytes (413 otherwise)."""
    return b"".join([chunk async for chunk in bounded_stream(request, limit)])


async def read_files(request: Request, limit: int) -> list[Upload]:
    """The ``files`` parts of a multipart body, streamed to spooled temporary files (413 past
    ``limit``; 422 for a malformed body, another field, or no file)."""
    parser = MultiPartParser(
        request.headers, bounded_stream(request, limit), max_files=MAX_FILES, max_fields=MAX_FILES
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(422, "invalid_request", f"malformed multipart body: {exc.message}") from None
    uploads: list[Upload] = []
    try:
        for index, (field, value) in enumerate(form.multi_items()):
            where = f"{FILES_FIELD}[{len(uploads)}]"
            if field != FILES_FIELD:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"unknown form field {field!r} (part {index}): send each file as a {FILES_FIELD!r} part",
                    field=field,
                )
            if not isinstance(value, UploadFile) or not (value.filename or "").strip():
                raise ApiError(
                    422,
                    "invalid_request",
                    f"{where}: a file part needs a filename (Content-Disposition filename=...): the "
                    "document id is the filename less its suffix",
                    field=where,
                )
            name = value.filename.strip().replace("\\", "/").lstrip("/") or value.filename.strip()
            if len(name) > MAX_NAME_CHARS:
                raise ApiError(
                    422, "invalid_request", f"{where}: filename over {MAX_NAME_CHARS} characters", field=where
                )
            uploads.append(Upload(name=name, content_type=value.content_type, file=value.file))
    except ApiError:
        for item in form.values():
            if isinstance(item, UploadFile):
                item.file.close()
        raise
    if not uploads:
        raise ApiError(
            422,
            "invalid_request",
            f"no file in the body: send one or more {FILES_FIELD!r} parts",
            field=FILES_FIELD,
        )
    return uploads
