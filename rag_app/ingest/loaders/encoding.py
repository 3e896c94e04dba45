"""Bytes -> text for the text formats (Markdown, text, JSONL, CSV, HTML): which encoding, and why.

The order is the HTML standard's: a byte-order mark, then the charset the transport declared (an HTTP
``Content-Type: ...; charset=``), then one the file declares itself (``<meta charset>`` or an XML
declaration, read only for markup), else UTF-8. Nothing is guessed: bytes that do not decode are an
error naming the file, the byte offset and the line, never replaced, because a mangled character in
an indexed passage would be quoted back to users as if it were the source's.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from rag_app.core.errors import LoaderError

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: How far into markup a ``<meta charset>`` or XML declaration is looked for (the HTML standard: 1024).
_PRESCAN_BYTES = 1024
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_DECL = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)["']""", re.IGNORECASE)
_CT_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def charset_from_content_type(content_type: str | None) -> str | None:
    """The ``charset`` parameter of an HTTP content type (``text/html; charset=ISO-8859-1``), if any."""
    if not content_type:
        return None
    match = _CT_CHARSET.search(content_type)
    return match.group(1) if match else None


def declared_in_markup(data: bytes) -> str | None:
    """The charset a markup file declares in its first bytes (``<meta charset>``, XML declaration)."""
    head = data[:_PRESCAN_BYTES]
    match = _XML_DECL.match(head) or _META_CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


def decode_text(data: bytes, *, name: Path | str, declared: str | None = None, markup: bool = False) -> str:
    """Decode ``data``: BOM, else ``declared`` (transport), else the markup's own declaration, else UTF-8.

    Raises :class:`LoaderError` naming ``name``, the byte offset and line of the first undecodable
    byte, or an unknown declared charset.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode(data[len(bom) :], encoding, name=name, why="its byte-order mark", skip=len(bom))
    if declared:
        return _decode(data, declared, name=name, why="the declared content type")
    if markup:
        own = declared_in_markup(data)
        if own:
            return _decode(data, own, name=name, why="its own charset declaration")
    return _decode(data, "utf-8", name=name, why=None)


def _decode(data: bytes, encoding: str, *, name: Path | str, why: str | None, skip: int = 0) -> str:
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise LoaderError(
            name, f"unknown character encoding {encoding!r} (from {why}); re-encode the file as UTF-8"
        ) from None
    try:
        return data.decode(codec.name)
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = data[: exc.start].count(b"\n") + 1
        said = f"{codec.name}, from {why}" if why else "UTF-8, the default when nothing is declared"
        raise LoaderError(
            name,
            f"not valid {said} (byte 0x{data[exc.start]:02x} at offset {offset}); re-encode the file as "
            "UTF-8, or declare its charset (a BOM, <meta charset>, or the HTTP content type)",
            line=line,
        ) from None
