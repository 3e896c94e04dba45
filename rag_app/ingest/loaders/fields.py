"""Free-form record metadata -> the typed fields every format shares: date, tickers, tags.

Search prefilters compare these columns (``date >= ...``, ``array_has_any(tickers, ...)``), so
every loader normalises them the same way: ISO dates, upper-case tickers, lower-case tags.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from rag_app.core.errors import LoaderError


def typed_fields(meta: dict[str, Any], *, path: Path | str, line: int | None) -> dict[str, Any]:
    """Pull date, tickers and tags out of free metadata with their proper types."""
    meta = dict(meta)
    date = parse_date(meta.pop("date", None), path=path, line=line)
    tickers = [t.upper() for t in _as_list(meta.pop("tickers", None) or meta.pop("ticker", None))]
    tags = [t.lower() for t in _as_list(meta.pop("tags", None))]
    return {"date": date, "tickers": tickers, "tags": tags, "metadata": meta}


def parse_date(value: Any, *, path: Path | str, line: int | None) -> dt.date | None:
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
