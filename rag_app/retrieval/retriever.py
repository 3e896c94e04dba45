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
from rag_app.core.tracing import set_root_attributes, stage_span
from rag_app.core.types import Passage, SearchFilters
from rag_app.models.embeddings import Embedder, check_query, load_embedder
from rag_app.retrieval.config import load_retrieval_config
from rag_app.retrieval.doc_aware import chunk_doc_ranking, fuse_doc_rankings, order_by_documents
from rag_app.retrieval.query_rewrite import HyDE, MultiQuery, fuse_passage_lists
from rag_app.store.doc_index import search_doc_tables
from rag_app.store.schema import table_name
from rag_app.store.vector_store import VectorStore

#: Chunks fetched per requested passage when documents are ranked (the pool documents are built from).
DOC_POOL_FACTOR = 3
DOC_POOL_MIN = 60
#: Query rewrites a site may use ("none" = the query as typed).
REWRITES = ("none", "multi", "hyde")


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
        #: Document-aware ordering (:mod:`rag_app.retrieval.doc_aware`), per site when measured.
        self.doc_signals: bool = bool(saved.get("doc_signals", settings.doc_signals))
        self.max_chunks_per_doc: int = int(saved.get("max_chunks_per_doc", settings.max_chunks_per_doc))
        #: Query rewriting (:mod:`rag_app.retrieval.query_rewrite`): "none", "multi" or "hyde".
        self.rewrite: str = str(saved.get("rewrite", "none"))
        #: Weight of a title/heading match in full-text search (0 = off).
        self.title_boost: float = float(saved.get("fts_title_boost", settings.fts_title_boost))
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
        *,
        doc_signals: bool | None = None,
        max_chunks_per_doc: int | None = None,
        rewrite: str | None = None,
        title_boost: float | None = None,
    ) -> dspy.Prediction:
        """Return ``dspy.Prediction(passages=[Passage...], timings={"embed_ms", "search_ms"}, notes)``.

        ``doc_signals``, ``max_chunks_per_doc``, ``rewrite`` and ``title_boost`` override the site's saved
        choices (the
        retrieval-configuration search tries each). Rewriting runs only when an LM is configured in
        DSPy's context; otherwise the original query is used and ``notes`` says so.
        """
        query = check_query(query, self.settings)
        k = self.default_k if k is None else int(k)
        if not 1 <= k <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k}")
        mode = mode or self.default_mode
        check_search_mode(mode)
        rewrite = self.rewrite if rewrite is None else rewrite
        if rewrite not in REWRITES:
            raise InputError(f"unknown query rewrite {rewrite!r}; known: {', '.join(REWRITES)}")
        timings: dict[str, float] = {}
        notes: list[str] = []
        texts = [query]
        set_root_attributes({"rag.site": self.site})
        if rewrite != "none":
            t0 = time.perf_counter()
            with stage_span("rewrite", {"rag.rewrite": rewrite}) as span:
                texts = self._rewrite(query, rewrite, notes)
                span.set_attribute("rag.rewrite.queries", len(texts))
            timings["rewrite_ms"] = (time.perf_counter() - t0) * 1000
        vectors: list[Any] = [None] * len(texts)
        model_id = None
        if mode != "fts":
            t0 = time.perf_counter()
            with stage_span("embed", {"rag.embed.texts": len(texts)}) as span:
                vectors = [self.embedder.embed_query(texts[0])]
                if rewrite == "hyde" and len(texts) > 1:  # the passage is embedded as a document
                    vectors += list(self.embedder.embed_documents(texts[1:]))
                else:
                    vectors += [self.embedder.embed_query(t) for t in texts[1:]]
                model_id = self.embedder.model_id
                span.set_attribute("rag.embed.model", str(model_id))
            timings["embed_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        where = as_filters(filters)
        with stage_span("search", self._search_attributes(mode, k, len(texts), where)) as span:
            passages = self._search(
                list(zip(texts, vectors, strict=True)),
                model_id,
                k=k,
                mode=mode,
                filters=where,
                doc_signals=self.doc_signals if doc_signals is None else doc_signals,
                max_per_doc=self.max_chunks_per_doc if max_chunks_per_doc is None else max_chunks_per_doc,
                title_boost=self.title_boost if title_boost is None else title_boost,
            )
            span.set_attribute("rag.search.hits", len(passages))
        timings["search_ms"] = (time.perf_counter() - t0) * 1000
        return dspy.Prediction(passages=passages, timings=timings, mode=mode, notes=notes)

    def _search_attributes(
        self, mode: SearchMode, k: int, queries: int, filters: SearchFilters | None
    ) -> dict[str, Any]:
        """What a trace's ``search`` span says about the search (not the query text: it may be private)."""
        return {
            "rag.site": self.site,
            "rag.search.collections": list(self.collections),
            "rag.search.mode": str(mode),
            "rag.search.k": k,
            "rag.search.queries": queries,
            "rag.search.filtered": filters is not None and not filters.is_empty(),
        }

    def _rewrite(self, query: str, rewrite: str, notes: list[str]) -> list[str]:
        """``[query, *rewrites]``; just ``[query]`` (with a note) without an LM or when the LM fails."""
        if dspy.settings.lm is None:
            notes.append(f"query rewrite {rewrite!r} skipped: no LM configured")
            return [query]
        try:
            if rewrite == "multi":
                return list(MultiQuery()(question=query).queries)
            passage = HyDE()(question=query).passage
            return [query, passage] if passage else [query]
        except Exception as exc:  # an LM failure must not fail retrieval: the original query still works
            notes.append(
                f"query rewrite {rewrite!r} failed ({type(exc).__name__}: {exc}); used the query as is"
            )
            return [query]

    def _search(
        self,
        queries: list[tuple[str, Any]],
        model_id: str | None,
        *,
        k: int,
        mode: SearchMode,
        filters: SearchFilters | None,
        doc_signals: bool,
        max_per_doc: int,
        title_boost: float,
    ) -> list[Passage]:
        """Chunk search for each (text, vector) query, fused; then document-aware ordering if on."""

        def chunks(depth: int, where: SearchFilters | None, text: str, vector: Any) -> list[Passage]:
            return self.store.search(
                self.site,
                self.collections,
                mode=mode,
                k=depth,
                query_text=text,
                query_vector=vector,
                model_id=model_id,
                filters=where,
                title_boost=title_boost,
            )

        depth = max(DOC_POOL_FACTOR * k, DOC_POOL_MIN) if (doc_signals or max_per_doc) else k
        pools = [chunks(depth, filters, text, vector) for text, vector in queries]
        pool = pools[0] if len(pools) == 1 else fuse_passage_lists(pools, rrf_k=self.settings.rrf_k, k=depth)
        if not (doc_signals or max_per_doc):
            return pool[:k]
        query, vector = queries[0]
        doc_scores = None
        if doc_signals:
            doc_lists = search_doc_tables(
                self.store.db,
                [table_name(self.site, c) for c in self.collections],
                query_vector=vector if mode != "fts" else None,
                model_id=model_id,
                query_text=query,
                depth=depth,
            )
            if doc_lists is not None:
                by_vector, by_text = doc_lists
                rankings = [chunk_doc_ranking(pool)]
                rankings += [by_vector] if mode != "fts" else []
                rankings += [by_text] if mode != "vector" else []
                doc_scores = fuse_doc_rankings(rankings, rrf_k=self.settings.rrf_k)
                pool = self._with_missing_documents(
                    pool, doc_scores, k, filters, max_per_doc, lambda n, w: chunks(n, w, query, vector)
                )
        return order_by_documents(pool, doc_scores, k=k, max_per_doc=max_per_doc)

    def _with_missing_documents(
        self,
        pool: list[Passage],
        doc_scores: dict[str, float],
        k: int,
        filters: SearchFilters | None,
        max_per_doc: int,
        chunks: Callable[[int, SearchFilters | None], list[Passage]],
    ) -> list[Passage]:
        """Add the chunks of top-ranked documents that only the document lists found.

        With metadata filters, documents outside the filtered pool are dropped instead: the document
        table holds no dates, tickers or tags to filter on.
        """
        present = {p.doc_id for p in pool}
        if filters is not None and not filters.is_empty():
            for doc_id in list(doc_scores):
                if doc_id not in present:
                    del doc_scores[doc_id]
            return pool
        top = sorted(doc_scores, key=lambda d: -doc_scores[d])[:k]
        missing = [d for d in top if d not in present]
        if not missing:
            return pool
        per_doc = max_per_doc or DOC_POOL_FACTOR
        return pool + chunks(len(missing) * per_doc, SearchFilters(doc_ids=missing))

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
