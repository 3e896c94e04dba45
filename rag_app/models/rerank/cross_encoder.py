"""The real reranker: a bge cross-encoder scoring every (query, passage) pair jointly.

Loading
    The model is loaded through :class:`sentence_transformers.CrossEncoder` (same files, same tokenizer)
    and then run directly (tokenizer + HF model or its ONNX export, see
    :mod:`rag_app.models.rerank.backends`), which is what makes it fast. When a cached ONNX export will
    serve, the torch weights are not loaded at all. Weights are never downloaded here
    (:mod:`rag_app.models.files`). A warm-up prediction at load pays the one-time costs (kernel
    selection, memory pools, graph optimisation) before any user waits for them.

Batching
    Pairs are sorted by token length, cut into batches of ``reranker_batch_size`` of similar length,
    padded only to the longest pair of their batch, and the scores are put back in input order.
    Exact-duplicate passages (same text) are scored once per call; repeated pairs across calls come from
    the :class:`~rag_app.models.rerank.cache.ScoreCache`.

Thread safety
    Scoring is safe from several threads: torch modules are not mutated under ``inference_mode``, ONNX
    Runtime sessions are thread-safe, and tokenization goes through
    :class:`~rag_app.models.rerank.pairs.PairEncoder`'s private, locked tokenizer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_app.core.errors import ModelNotAvailableError, RagError
from rag_app.core.settings import BGE_RERANKER_BASE_REVISION, Settings
from rag_app.core.types import Passage
from rag_app.models.files import ResolvedModel, resolve_model
from rag_app.models.rerank.backends.onnx import load_onnx_backend
from rag_app.models.rerank.backends.onnx_export import model_key, onnx_files_ready
from rag_app.models.rerank.backends.selection import Backend, resolve_backend
from rag_app.models.rerank.backends.torch import TorchBackend
from rag_app.models.rerank.base import LOGGER_NAME, check_top_n
from rag_app.models.rerank.cache import ScoreCache
from rag_app.models.rerank.pairs import PairEncoder, default_max_length, position_limit
from rag_app.models.rerank.scoring import cached_scores, ranked_passages, text_digest

logger = logging.getLogger(LOGGER_NAME)

DEFAULT_RERANKER = "BAAI/bge-reranker-base"
_WARMUP_QUERY = "what does the reranker warm-up check?"
_WARMUP_PASSAGES = (
    "The warm-up runs one real prediction at load time.",
    "It makes the first request as fast as the later ones by paying one-time costs (kernel selection, "
    "memory pools, graph optimisation) before any user waits for them, with two pairs of different length.",
)


class CrossEncoderReranker:
    """A bge cross-encoder reranker: ``score`` pairs, ``rerank`` passages.

    Build it through :func:`rag_app.models.rerank.load_reranker` (the runtime keeps one per process); it
    is warmed with a real prediction at load. Copies (``copy.copy``/``copy.deepcopy``, as DSPy optimisers
    make of programs) return the same instance: the weights are shared, never duplicated.
    """

    available = True

    def __init__(
        self,
        model: str = DEFAULT_RERANKER,
        *,
        revision: str | None = BGE_RERANKER_BASE_REVISION,
        backend: str = "auto",
        max_length: int | None = None,
        query_max_tokens: int = 64,
        batch_size: int = 8,
        cache: ScoreCache | None = None,
        cache_size: int = 8192,
        onnx_dir: Path | None = None,
        hf_cache_dir: Path | None = None,
        warmup: bool = True,
    ) -> None:
        t0 = time.perf_counter()
        self.model_id = model
        self.requested_backend = backend
        self.backend = resolve_backend(backend)
        self.resolved: ResolvedModel = resolve_model(model, revision, hf_cache_dir, kind="reranker")
        self.revision = self.resolved.revision
        self.path = self.resolved.path
        self.batch_size = int(batch_size)
        self.model_key = model_key(model, self.revision, self.path, self.resolved.origin)
        self.onnx_dir = (Path(onnx_dir) if onnx_dir else Path(".rag") / "cache" / "onnx") / self.model_key
        self._cache = cache if cache is not None else ScoreCache(cache_size)
        self._stats_lock = threading.Lock()
        self.pairs_scored = 0
        self.batches_run = 0

        tokenizer, hf_model, config = self._load(max_length)
        self.max_length = self._pick_max_length(config, tokenizer, max_length)
        self.encoder = PairEncoder(tokenizer, self.max_length, query_max_tokens)
        self.query_max_tokens = self.encoder.query_budget
        self._backend: Backend = self._build_backend(hf_model)
        del hf_model
        if warmup:
            self._predict(_WARMUP_QUERY, list(_WARMUP_PASSAGES), count=False)
        self.load_ms = (time.perf_counter() - t0) * 1000
        logger.info("reranker ready in %.0f ms: %s", self.load_ms, self.describe())

    @classmethod
    def from_settings(cls, settings: Settings, *, cache: ScoreCache | None = None) -> CrossEncoderReranker:
        return cls(
            settings.reranker_model,
            revision=settings.reranker_revision,
            backend=settings.reranker_backend,
            max_length=settings.reranker_max_length,
            query_max_tokens=settings.reranker_query_max_tokens,
            batch_size=settings.reranker_batch_size,
            cache=cache,
            cache_size=settings.rerank_cache_size,
            onnx_dir=settings.cache_dir / "onnx",
            hf_cache_dir=settings.hf_cache_dir,
        )

    # -- loading --------------------------------------------------------------------------------
    def _load(self, max_length: int | None) -> tuple[Any, Any, Any]:
        """(tokenizer, HF model or None, config). The torch model is skipped when a cached ONNX
        export will serve; otherwise everything comes from ``CrossEncoder`` (same files)."""
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # no load reports or progress bars in service logs
        hf_logging.disable_progress_bar()
        try:
            # Both ONNX backends only need the fp32 export (int8 is quantised from it, not from torch).
            if self.backend.startswith("onnx") and onnx_files_ready(self.onnx_dir, "onnx-fp32"):
                try:
                    from transformers import AutoConfig, AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                    config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
                    return tokenizer, None, config
                except (OSError, ValueError):
                    pass  # e.g. a sentence-transformers layout with the tokenizer in a subfolder
            from sentence_transformers import CrossEncoder

            try:
                cross_encoder = CrossEncoder(
                    str(self.path), device="cpu", local_files_only=True, max_length=max_length
                )
            except (OSError, ValueError) as exc:
                raise ModelNotAvailableError(
                    f"reranker model {self.model_id} at {self.path} could not be loaded: {exc}. Fix: "
                    "`rag-app models pull` again, or point RAG_RERANKER_MODEL at a complete local copy"
                ) from exc
            hf_model = cross_encoder.model
            if cross_encoder.num_labels != 1 or hf_model is None:
                raise RagError(
                    f"reranker model {self.model_id} has {cross_encoder.num_labels} labels; a reranker "
                    "needs a single-logit (num_labels=1) sequence-classification head"
                )
            return cross_encoder.tokenizer, hf_model, hf_model.config
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

    def _pick_max_length(self, config: Any, tokenizer: Any, requested: int | None) -> int:
        limit = position_limit(config)
        if requested is None:
            return default_max_length(f"{self.model_id} {self.path}", config, tokenizer.model_max_length)
        if requested > limit:
            logger.warning(
                "reranker_max_length=%d exceeds what %s can take (%d positions); using %d",
                requested,
                self.model_id,
                limit,
                limit,
            )
            return limit
        return int(requested)

    def _build_backend(self, hf_model: Any) -> Backend:
        names = self.encoder.input_names
        if not self.backend.startswith("onnx"):
            return TorchBackend.create(hf_model, self.backend, names)
        return load_onnx_backend(self.backend, self.onnx_dir, names, hf_model, lambda: self._load(None)[1])

    # -- scoring --------------------------------------------------------------------------------
    def _cache_key(self, query: str, text: str) -> tuple[str, ...]:
        return (
            self.model_key,
            self.backend,
            str(self.max_length),
            str(self.query_max_tokens),
            query,
            text_digest(text),
        )

    def _predict(self, query: str, texts: Sequence[str], *, count: bool = True) -> np.ndarray:
        """Raw logits (float32) of each (query, text), length-sorted batches, original order back."""
        pairs = self.encoder.encode(query, texts)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].input_ids))
        logits = np.empty(len(pairs), dtype=np.float32)
        batches = 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            logits[rows] = self._backend.run(self.encoder.batch([pairs[i] for i in rows]))
            batches += 1
        if count:
            with self._stats_lock:
                self.pairs_scored += len(pairs)
                self.batches_run += batches
        return logits

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Raw logits (float64 array, input order) for each passage text; duplicates scored once."""
        return cached_scores(
            passages,
            self._cache,
            lambda text: self._cache_key(query, text),
            lambda t: self._predict(query, t),
        )

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        """All ``passages`` rescored, best first, cut to ``top_n`` (None = keep all).

        Each returned passage is a copy with ``score`` = ``rerank_score`` = the logit, ``relevance`` =
        float64 sigmoid, ``reranked=True``, and its original ``retrieval_rank``/``retrieval_score``
        (filled from the input order when the caller left them unset). Ties keep retrieval order.
        """
        passages = list(passages)
        top_n = check_top_n(top_n, len(passages))
        if not passages:
            return []
        return ranked_passages(passages, self.score(query, [p.text for p in passages]), top_n)

    def cache_stats(self) -> dict[str, int]:
        """Score-cache counters (``hits``, ``misses``, ``size``, ``maxsize``) and model work done."""
        with self._stats_lock:
            work = {"pairs_scored": self.pairs_scored, "batches": self.batches_run}
        return {**self._cache.stats(), **work}

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        notes = (["auto"] if self.requested_backend == "auto" else []) + list(self._backend.optimizations)
        picked = f"{self.backend} ({', '.join(notes)})" if notes else self.backend
        return (
            f"{self.model_id}{rev} [{self.resolved.origin}: {self.path}] backend={picked} "
            f"max_length={self.max_length} query_max_tokens={self.query_max_tokens} "
            f"batch_size={self.batch_size}"
        )

    def __copy__(self) -> CrossEncoderReranker:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> CrossEncoderReranker:
        return self

    def __repr__(self) -> str:
        return f"CrossEncoderReranker({self.describe()})"
