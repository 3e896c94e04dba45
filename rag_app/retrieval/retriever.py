"""The first stage as a DSPy module: the top-k (default 20) passages of a site for a query.

A ``dspy.Module`` so programs compose it like any other step and optimizers see one pipeline. The
embedder is only touched for vector and hybrid search: full-text search works with no model at all.
Per-site defaults for k and mode come from ``programs/<site>/retrieval.json`` when the offline
retrieval-configuration search has written one, else from settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from rag_app.core.errors import InputError, validation_message
from rag_app.core.settings import SearchMode, Settings, check_search_mode
from rag_app.core.types import Passage, SearchFilters
from rag_app.models.embeddings import Embedder, check_query, load_embedder
from rag_app.retrieval.config import load_retrieval_config
from rag_app.store.vector_store import VectorStore


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
        embedder_factory: Callable[[], Embedder] | None = None,
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
        #: Called on the first vector or hybrid search when no ``embedder`` was given (the runtime
        #: passes its shared one); without either the retriever loads its own.
        self._embedder_factory = embedder_factory

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            factory = self._embedder_factory or (lambda: load_embedder(self.settings))
            self._embedder = factory()
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
        check_search_mode(mode)
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

    def document_metadata(self, collection: str) -> dict[str, dict[str, Any]]:
        """``doc_id -> metadata`` of every document in one of this retriever's collections.

        What a program needs to turn a facet (a sector, a product) into a ``doc_ids`` prefilter without
        reading the store itself.
        """
        if collection not in self.collections:
            raise InputError(
                f"collection {collection!r} is not searched by this retriever ({self.collections})"
            )
        return self.store.document_metadata(self.site, collection)
