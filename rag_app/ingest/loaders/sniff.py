"""Which format a file or a blob of fetched bytes is: by content type, by name suffix, else by its bytes.

Fetched content (a URL, an S3 object, an upload) often comes with a generic type
(``application/octet-stream``, ``binary/octet-stream``) or none, and URLs often have no suffix, so
the decision falls back step by step: a specific content type wins, then the name's suffix, then the
first bytes (``%PDF``, a zip holding ``word/document.xml``, an HTML tag), else plain text.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Literal

Format = Literal["markdown", "text", "jsonl", "csv", "html", "pdf", "docx"]

SUFFIX_FORMATS: dict[str, Format] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".csv": "csv",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
CONTENT_TYPE_FORMATS: dict[str, Format] = {
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/csv": "csv",
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/jsonlines": "jsonl",
}
#: Types that say nothing about the format: the suffix or the bytes decide.
GENERIC_TYPES = {
    "",
    "application/octet-stream",
    "binary/octet-stream",
    "application/x-www-form-urlencoded",
    "application/download",
    "application/force-download",
}
_HTML_START = re.compile(
    rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL
)


def name_suffix(name: str) -> str:
    """The lower-case suffix of a file name, path, URL or object key (query and fragment ignored)."""
    base = name.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    last = base.rsplit("/", 1)[-1]
    dot = last.rfind(".")
    return last[dot:].lower() if dot > 0 else ""


def detect_format(name: str, content_type: str | None, data: bytes) -> Format:
    """The format of ``data``: specific content type, else ``name``'s suffix, else sniffed from the bytes.

    ``text/plain`` counts as specific only when the suffix is not a text-family format (servers
    serve ``.md``, ``.csv`` and ``.jsonl`` files as ``text/plain``).
    """
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    by_suffix = SUFFIX_FORMATS.get(name_suffix(name))
    if mime in CONTENT_TYPE_FORMATS:
        return CONTENT_TYPE_FORMATS[mime]
    if mime == "text/plain":
        return by_suffix if by_suffix in ("markdown", "text", "jsonl", "csv") else "text"
    if by_suffix:
        return by_suffix
    return sniff_bytes(data)


def sniff_bytes(data: bytes) -> Format:
    """Format from the first bytes alone: ``%PDF``, a DOCX zip, HTML markup, else plain text."""
    if data.startswith(b"%PDF"):
        return "pdf"
    if data.startswith(b"PK\x03\x04") and _is_docx(data):
        return "docx"
    head = data[:4096].lstrip(b"\xef\xbb\xbf")
    if _HTML_START.match(head):
        return "html"
    return "text"


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False
