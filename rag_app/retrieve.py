"""The first stage as a DSPy module: the top-k (default 20) passages of a site for a query.

A ``dspy.Module`` so programs compose it like any other step and optimizers see one pipeline. The
embedder is only touched for vector and hybrid search: full-text search works with no model at all.
Per-site defaults for k and mode come from ``programs/<site>/retrieval.json`` when the offline
retrieval-configuration search has written one, else from settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy

from rag_app.embeddings import Embedder, check_query, get_embedder
from rag_app.errors import InputError, validation_message
from rag_app.settings import SearchMode, Settings
from rag_app.store import VectorStore
from rag_app.types import Passage, SearchFilters

SEARCH_MODES: tuple[str, ...] = ("vector", "fts", "hybrid")


def retrieval_config_path(settings: Settings, site: str) -> Path:
    return settings.programs_dir / site / "retrieval.json"


def load_retrieval_config(settings: Settings, site: str) -> dict[str, Any]:
    """The saved best retrieval configuration of a site (``{"k", "mode", "rerank"}``), or ``{}``."""
    path = retrieval_config_path(settings, site)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable retrieval config ({exc}); fix or delete it") from exc
    best = data.get("best", data)
    return {key: best[key] for key in ("k", "mode", "rerank") if key in best}


def as_filters(filters: SearchFilters | dict[str, Any] | None) -> SearchFilters | None:
    if filters is None or isinstance(filters, SearchFilters):
        return filters
    try:
        return SearchFilters.model_validate(filters)
    except ValueError as exc:
        raise InputError(f"invalid filters: {validation_message(exc)}") from exc


class LanceDBRetriever(dspy.Module):
    """Retrieve from one site's LanceDB tables (all its collections, or the ones named)."""

    def __init__(
        self,
        settings: Settings,
        site: str,
        collections: Sequence[str] | None = None,
        *,
        store: VectorStore | None = None,
        embedder: Embedder | None = None,
        use_saved_config: bool = True,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store or VectorStore(settings)
        self.site = site
        self.collections = (
            self.store.check_site(site)
            if not collections
            else [c for name in collections for c in self.store.check_site(site, name)]
        )
        saved = load_retrieval_config(settings, site) if use_saved_config else {}
        self.default_k: int = int(saved.get("k", settings.retrieve_k))
        self.default_mode: SearchMode = saved.get("mode", settings.search_mode)
        #: Whether pipelines built on this retriever rerank by default (the site's saved choice).
        self.default_rerank: bool = bool(saved.get("rerank", True))
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.settings)
        return self._embedder

    def forward(
        self,
        query: str,
        k: int | None = None,
        filters: SearchFilters | dict[str, Any] | None = None,
        mode: SearchMode | None = None,
    ) -> dspy.Prediction:
        """Return ``dspy.Prediction(passages=[Passage...], timings={"embed_ms", "search_ms"})``."""
        query = check_query(query, self.settings)
        k = self.default_k if k is None else int(k)
        if not 1 <= k <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k}")
        mode = mode or self.default_mode
        if mode not in SEARCH_MODES:
            raise InputError(f"unknown search mode {mode!r}; use one of {', '.join(SEARCH_MODES)}")
        timings: dict[str, float] = {}
        vector = None
        model_id = None
        if mode != "fts":
            t0 = time.perf_counter()
            vector = self.embedder.embed_query(query)
            model_id = self.embedder.model_id
            timings["embed_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        passages: list[Passage] = self.store.search(
            self.site,
            self.collections,
            mode=mode,
            k=k,
            query_text=query,
            query_vector=vector,
            model_id=model_id,
            filters=as_filters(filters),
        )
        timings["search_ms"] = (time.perf_counter() - t0) * 1000
        return dspy.Prediction(passages=passages, timings=timings, mode=mode)
