"""Second stage: a cross-encoder rescoring the retriever's whole candidate pool, keeping the best few.

The retriever returns the top ``retrieve_k`` (20) passages; the reranker scores every (query, passage)
pair jointly with a BAAI bge cross-encoder and :class:`~rag_app.retrieval.pipeline.RetrieveThenRerank`
keeps the best ``rerank_top_n`` (5). The rerank window is always the whole candidate pool, never an
already-cut top 5: a passage ranked 20th by retrieval can come first.

Models
    ``BAAI/bge-reranker-base`` at the pinned revision by default; ``BAAI/bge-reranker-large`` and
    ``BAAI/bge-reranker-v2-m3`` through ``reranker_model``/``reranker_revision``, or any local directory
    that :class:`sentence_transformers.CrossEncoder` loads.

Modules
    :mod:`.base` (the :class:`Reranker` protocol, score semantics), :mod:`.pairs` (tokenization and
    truncation), :mod:`.cache` (the score cache), :mod:`.cross_encoder` (the real reranker),
    :mod:`.fallback` (the stand-in without weights), :mod:`.scoring` (cache lookups and ranked passages,
    shared by both scoring rerankers), :mod:`.remote` (a rerank server: TEI, Infinity, vLLM, Cohere,
    another rag-app; ``reranker_backend="remote"``), :mod:`.backends` (how the model runs: torch, ONNX,
    and what ``auto`` picks). Speed and ranking-quality measurements: README ("Reranker speed on CPU")
    and ``benchmarks/README.md``.
"""

from __future__ import annotations

from rag_app.core.errors import ModelNotAvailableError
from rag_app.core.settings import Settings
from rag_app.models.rerank.base import Reranker, unavailable_note
from rag_app.models.rerank.cache import ScoreCache
from rag_app.models.rerank.cross_encoder import CrossEncoderReranker
from rag_app.models.rerank.fallback import FallbackReranker
from rag_app.models.rerank.remote import RemoteReranker


def load_reranker(settings: Settings) -> Reranker:
    """Build (and warm) the reranker these settings name; a new instance, with its own score cache.

    :class:`rag_app.runtime.Runtime` owns and shares it. ``reranker_backend="remote"`` gives a
    :class:`RemoteReranker` (no request is made here; ``reranker_on_missing`` applies per call). Missing
    weights raise :class:`ModelNotAvailableError` (``reranker_on_missing="fail"``) or give a
    :class:`FallbackReranker` (``"fallback"``).
    """
    cache = ScoreCache(settings.rerank_cache_size)
    if settings.reranker_backend == "remote":
        return RemoteReranker.from_settings(settings, cache=cache)
    try:
        return CrossEncoderReranker.from_settings(settings, cache=cache)
    except ModelNotAvailableError as exc:
        if settings.reranker_on_missing != "fallback":
            raise
        return FallbackReranker(str(exc), settings.reranker_model, settings.reranker_revision)


__all__ = [
    "CrossEncoderReranker",
    "FallbackReranker",
    "RemoteReranker",
    "Reranker",
    "ScoreCache",
    "load_reranker",
    "unavailable_note",
]
