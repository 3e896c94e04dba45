"""SQL text for LanceDB predicates: quoted literals and the search prefilter built from SearchFilters.

LanceDB takes filters as SQL strings, so every user-supplied value passes through :func:`sql_str`
(quoted, quotes doubled) and is never interpolated raw.
"""

from __future__ import annotations

from collections.abc import Iterable

from rag_app.core.errors import InputError
from rag_app.core.types import SearchFilters


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    return ", ".join(sql_str(v) for v in values)


def filter_sql(filters: SearchFilters | None) -> str | None:
    """SQL prefilter for LanceDB; values are quoted, never interpolated raw."""
    if filters is None or filters.is_empty():
        return None
    clauses = []
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        raise InputError(f"date_from {filters.date_from} is after date_to {filters.date_to}")
    if filters.date_from:
        clauses.append(f"date >= date '{filters.date_from.isoformat()}'")
    if filters.date_to:
        clauses.append(f"date <= date '{filters.date_to.isoformat()}'")
    if filters.tickers:
        clauses.append(f"array_has_any(tickers, [{sql_list(t.upper() for t in filters.tickers)}])")
    if filters.tags:
        clauses.append(f"array_has_any(tags, [{sql_list(t.lower() for t in filters.tags)}])")
    if filters.doc_ids:
        clauses.append(f"doc_id IN ({sql_list(filters.doc_ids)})")
    return " AND ".join(clauses)
