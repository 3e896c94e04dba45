"""Retrieve-and-optionally-rerank as one call with a JSON-ready result, for the CLI and scripts.

Retrievers and pipelines are cached per (settings, site, collection), so a batch of queries opens
the database, reads the site's saved configuration and loads models once. The plain (no-rerank)
path never loads the reranker.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from rag_app.errors import InputError, LoaderError
from rag_app.loaders import read_text
from rag_app.retrieve import LanceDBRetriever
from rag_app.settings import Settings

_RETRIEVERS: dict[tuple[str, str, str | None], LanceDBRetriever] = {}
_PIPELINES: dict[tuple[str, str, str | None], Any] = {}
_LOCK = threading.RLock()


def retriever_for(settings: Settings, site: str, collection: str | None = None) -> LanceDBRetriever:
    """The shared retriever for a site (one collection, or all of them)."""
    key = (settings.cache_key(), site, collection)
    with _LOCK:
        if key not in _RETRIEVERS:
            _RETRIEVERS[key] = LanceDBRetriever(settings, site, [collection] if collection else None)
        return _RETRIEVERS[key]


def pipeline_for(settings: Settings, site: str, collection: str | None = None) -> Any:
    """The shared ``RetrieveThenRerank`` over :func:`retriever_for`'s retriever."""
    from rag_app.rerank import RetrieveThenRerank, get_reranker

    key = (settings.cache_key(), site, collection)
    with _LOCK:
        if key not in _PIPELINES:
            retriever = retriever_for(settings, site, collection)
            _PIPELINES[key] = RetrieveThenRerank(retriever, get_reranker(settings), settings)
        return _PIPELINES[key]


def search_once(
    settings: Settings,
    site: str,
    query: str,
    *,
    collection: str | None = None,
    k: int | None = None,
    mode: str | None = None,
    rerank: bool = False,
    top_n: int | None = None,
    filters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"query", "mode", "reranked", "passages": [...], "timings", "notes"}``."""
    notes: list[str] = []
    if rerank:
        pipeline = pipeline_for(settings, site, collection)
        pred = pipeline(query=query, k=k, top_n=top_n, filters=filters, mode=mode)
        passages = pred.passages
        reranked = bool(pred.reranked)
        if not pipeline.reranker.available:
            notes.append(f"reranker unavailable, kept retrieval order: {pipeline.reranker.describe()}")
        timings = dict(pred.timings)
        used_mode = getattr(pred, "mode", None) or mode or pipeline.retriever.default_mode
    else:
        pred = retriever_for(settings, site, collection)(query=query, k=k, filters=filters, mode=mode)
        passages, reranked, timings, used_mode = pred.passages, False, pred.timings, pred.mode
    return {
        "query": query,
        "mode": used_mode,
        "reranked": reranked,
        "passages": [p.model_dump(mode="json") for p in passages],
        "timings": timings,
        "notes": notes,
    }


def read_query_file(path: Path) -> list[str]:
    """Queries from a JSONL file (field ``query``); errors name the file and line."""
    if not path.is_file():
        raise InputError(f"query file not found: {path}")
    queries: list[str] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LoaderError(path, f"invalid JSON ({exc.msg})", line=number) from None
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise LoaderError(path, "expected an object with a string field 'query'", line=number)
        queries.append(record["query"])
    if not queries:
        raise InputError(f"{path} holds no queries")
    return queries
