"""Second stage: a cross-encoder rescoring the retriever's whole candidate pool, keeping the best few.

The retriever returns the top ``retrieve_k`` (20) passages; :class:`CrossEncoderReranker` scores every
(query, passage) pair jointly with a BAAI bge cross-encoder and :class:`RetrieveThenRerank` keeps the
best ``rerank_top_n`` (5). The rerank window is always the whole candidate pool, never an already-cut
top 5: a passage ranked 20th by retrieval can come first.

Models
    ``BAAI/bge-reranker-base`` at the pinned revision by default; ``BAAI/bge-reranker-large`` and
    ``BAAI/bge-reranker-v2-m3`` through ``reranker_model``/``reranker_revision``, or any local directory
    that :class:`sentence_transformers.CrossEncoder` loads. Weights are never downloaded here (see
    :mod:`rag_app.models.files`). The model is loaded through ``CrossEncoder`` (same files, same tokenizer)
    and then run directly (tokenizer + HF model or its ONNX export), which is what makes it fast.

Scores
    Passages are ranked by the raw logit (``rerank_score``). ``relevance`` is ``sigmoid(logit)``
    computed in float64 (float32 rounds logits above ~17 to exactly 1.0). Scores are NOT comparable
    across models (base, large and v2-m3 have different logit scales), nor calibrated probabilities: use
    them to order one query's candidates, never as a hard threshold ("drop below 0.5").

Truncation
    ``max_length`` is 512 for base/large and 1024 for v2-m3 unless ``reranker_max_length`` says
    otherwise (clamped to the model's position table). A pair is built explicitly: the query is cut to
    ``reranker_query_max_tokens`` (and never more than half the window), then the passage gets the rest,
    ``max_length - len(query_ids) - special tokens``. A long query therefore cannot push the passage out.

Batching
    Pairs are sorted by token length, cut into batches of ``reranker_batch_size`` of similar length,
    padded only to the longest pair of their batch, and the scores are put back in input order.
    Exact-duplicate passages (same text) are scored once per call.

Score cache
    An in-memory, thread-safe LRU of ``rerank_cache_size`` entries keyed by (model + revision, backend,
    max_length, query budget, query, sha1(passage text)); :meth:`CrossEncoderReranker.cache_stats` (and
    the module-level :func:`cache_stats`, for the server's /metrics) expose the hit/miss counters.

Thread safety
    Inference is safe to run from several threads (torch modules are not mutated under
    ``inference_mode``; ONNX Runtime sessions are thread-safe). The Rust fast tokenizer is not safe
    against concurrent *mutation*: Hugging Face's ``tokenizer(...)`` re-sets truncation/padding on the
    shared Rust object on every call, which is known to race across threads ("Already borrowed"; not
    reproduced here with tokenizers 0.23 in 8 threads x 50 calls, but not guaranteed either). The reranker
    therefore tokenizes with a private copy of the Rust tokenizer whose truncation/padding are switched
    off once (MiniLM's tokenizer.json even ships padding to 128), guarded by a lock. The lock costs little:
    tokenizing and padding 20 passages of 256 tokens takes ~4 ms (measured) against >1 s of inference on
    2 cores. The alternative, one tokenizer copy per thread, was
    measured (RSS growth per ``Tokenizer.from_str`` copy, this machine): 6.5 MiB for MiniLM's 30k
    WordPiece vocabulary and ~220 MiB for a synthetic 250k-piece Unigram tokenizer, XLM-R's size (which
    bge-reranker-base/large/v2-m3 use) - i.e. ~1.8 GB for an 8-thread pool, for no speed gain.
    torch's thread count is process-global: this module never calls ``torch.set_num_threads``; ONNX
    Runtime sessions get the same number of intra-op threads as torch.
    Async callers use :meth:`CrossEncoderReranker.ascore` / :meth:`~CrossEncoderReranker.arerank`, which
    run the inference in a worker thread (``asyncio.to_thread``) so the event loop keeps serving.

Backends (``reranker_backend``) and what ``auto`` picks
    See :mod:`rag_app.models.rerank_backends` for each backend. ``auto`` resolves to ``cuda-fp16`` on a
    GPU; else ``torch-bf16`` where the CPU has bf16 units; else ``onnx-int8``. Measured with
    ``benchmarks/rerank.py --tokens 128,256,512 --repeats 5`` (bge-reranker-base architecture, 1 query x
    20 passages per call, engines called round-robin, 2 AMD EPYC Zen 5 cores with avx512_bf16, quiet machine):
    median ms per call, speed-up over ``CrossEncoder.predict`` defaults in the same run.
    (``CrossEncoder.predict`` runs fp32 through MKL, which takes its AVX2 path on AMD CPUs; ONNX
    Runtime's own fp32 kernels use AVX-512, hence onnx-fp32's 2x.)

    ======  ============  ============  ===========  ===========  ===========
    tokens  CE.predict    torch-fp32    torch-bf16   onnx-fp32    onnx-int8
    ======  ============  ============  ===========  ===========  ===========
    128     2388          2261 (1.06x)   532 (4.49x) 1084 (2.20x)  488 (4.89x)
    256     4906          4758 (1.03x)  1080 (4.54x) 2424 (2.02x) 1171 (4.19x)
    512     12067         10036 (1.20x) 2277 (5.30x) 5776 (2.09x) 3081 (3.92x)
    ======  ============  ============  ===========  ===========  ===========

    A second full run gave torch-bf16 4.47x / 4.77x / 4.95x at 128 / 256 / 512 tokens.

    torch-bf16 runs the encoder through :mod:`rag_app.models.fused_encoder` (fused QKV, GELU and residual
    kernels with prepacked weights, attention one sequence at a time, a last layer that computes only
    the position the head reads); with Hugging Face's own layers in bf16 it measured 3.5-4.2x at 256
    tokens. Counted in the plain model's FLOPs, the forward now runs at ~850 GFLOP/s, ~95% of a timed
    2048^3 bf16 matmul here (~890 GFLOP/s; fp32 ~215).

    ``auto`` picks ``torch-bf16`` on bf16 hardware: it is the fastest backend here at 256 and 512
    tokens and within 10% of int8 at 128, and it ranks like fp32. On real MiniLM activations
    (``tests/test_rerank_numerics.py``) bf16 keeps Spearman 0.9985 with fp32 and the same top-5 set on
    9 of 10 queries; the 10th swaps a 0.011-logit near-tie. Dynamic int8 drops to Spearman 0.97 and the
    same top-5 on only 4 of 10 (4 of 5 shared on the rest). bf16 also needs no export or quantisation at
    first start (~30-40 s for bge-reranker-base, cached afterwards). Without bf16 units bf16 is
    emulated and slower than fp32, while int8 runs on VNNI/AVX2 integer kernels. So ``onnx-int8`` is the
    CPU default there: it is the only >= 4x option on such CPUs. If ``rag-app eval retrieval --rerank``
    shows a quality drop with the real weights, set ``reranker_backend=onnx-fp32`` (exact scores, ~2x).
    ``torch-fp32`` is the model as loaded, unmodified: the reference.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag_app.core.errors import InputError, ModelNotAvailableError, RagError
from rag_app.core.settings import BGE_RERANKER_BASE_REVISION, Settings
from rag_app.core.types import Passage
from rag_app.models.files import ResolvedModel, resolve_model
from rag_app.models.rerank_backends import (
    ONNX_FP32_FILE,
    Backend,
    OnnxBackend,
    TorchBackend,
    export_onnx,
    model_key,
    onnx_files_ready,
    onnx_input_names,
    quantize_int8,
    remove_onnx_cache,
    resolve_backend,
)

logger = logging.getLogger("rag_app.models.rerank")

DEFAULT_RERANKER = "BAAI/bge-reranker-base"
#: Default ``max_length`` by model name (matched anywhere in the id or path, case-insensitively).
MODEL_MAX_LENGTH: dict[str, int] = {
    "bge-reranker-v2-m3": 1024,
    "bge-reranker-large": 512,
    "bge-reranker-base": 512,
}
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert"}
_WARMUP_QUERY = "what does the reranker warm-up check?"
_WARMUP_PASSAGES = (
    "The warm-up runs one real prediction at load time.",
    "It makes the first request as fast as the later ones by paying one-time costs (kernel selection, "
    "memory pools, graph optimisation) before any user waits for them, with two pairs of different length.",
)


def relevance_from_logits(logits: Any) -> np.ndarray:
    """``sigmoid(logit)`` in float64: 0-1, monotone in the logit, never a calibrated probability."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


# --- score cache -------------------------------------------------------------------------------


class ScoreCache:
    """A bounded, thread-safe LRU of pair scores with hit/miss counters (``maxsize=0`` = off)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = max(0, int(maxsize))
        self._data: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> float | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: float) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._data),
                "maxsize": self.maxsize,
            }

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0


# --- tokenization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedPair:
    """One (query, passage) pair as the model sees it, with how much of each side survived."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...]
    query_tokens: int
    passage_tokens: int
    passage_truncated: bool


class PairEncoder:
    """Builds model inputs with an explicit query budget, from a private copy of the fast tokenizer."""

    def __init__(self, hf_tokenizer: Any, max_length: int, query_max_tokens: int) -> None:
        from tokenizers import Tokenizer

        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise RagError(
                f"the reranker needs a fast tokenizer (tokenizer.json); got {type(hf_tokenizer).__name__}"
            )
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self._lock = threading.Lock()
        self._post = self._tok.post_processor
        self.pad_id = int(hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0)
        self._cls = hf_tokenizer.cls_token_id
        self._sep = hf_tokenizer.sep_token_id
        self.n_special = int(self._post.num_special_tokens_to_add(True)) if self._post is not None else 3
        self.max_length = int(max_length)
        room = self.max_length - self.n_special
        # The query never takes more than half of the window: the passage is what is being judged.
        self.query_budget = max(1, min(int(query_max_tokens), room // 2))
        self.input_names = tuple(n for n in _INPUT_NAMES if n in set(hf_tokenizer.model_input_names))
        if "input_ids" not in self.input_names or "attention_mask" not in self.input_names:
            self.input_names = tuple(dict.fromkeys(("input_ids", "attention_mask", *self.input_names)))

    def encode(self, query: str, passages: Sequence[str]) -> list[EncodedPair]:
        with self._lock:
            q = self._tok.encode(query, add_special_tokens=False)
            encs = self._tok.encode_batch(list(passages), add_special_tokens=False)
            if len(q.ids) > self.query_budget:
                q.truncate(self.query_budget)
            n_query = len(q.ids)
            room = self.max_length - n_query - self.n_special
            pairs = []
            for p in encs:
                n_passage = len(p.ids)
                if n_passage > room:
                    p.truncate(room)
                pairs.append(self._merge(q, p, n_query, n_passage > room))
            return pairs

    def _merge(self, q: Any, p: Any, n_query: int, truncated: bool) -> EncodedPair:
        if self._post is not None:
            merged = self._post.process(q, p, add_special_tokens=True)
            ids, types = tuple(merged.ids), tuple(merged.type_ids)
        else:  # no post-processor in tokenizer.json: BERT layout [CLS] q [SEP] p [SEP]
            ids = (self._cls, *q.ids, self._sep, *p.ids, self._sep)
            types = (0,) * (len(q.ids) + 2) + (1,) * (len(p.ids) + 1)
        return EncodedPair(ids, types, n_query, len(p.ids), truncated)

    def batch(self, pairs: Sequence[EncodedPair]) -> dict[str, np.ndarray]:
        """Pad to the longest pair of this batch only; int64 arrays for torch and ONNX Runtime."""
        width = max(len(p.input_ids) for p in pairs)
        ids = np.full((len(pairs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(pairs), width), dtype=np.int64)
        types = np.zeros((len(pairs), width), dtype=np.int64)
        for row, pair in enumerate(pairs):
            n = len(pair.input_ids)
            ids[row, :n] = pair.input_ids
            mask[row, :n] = 1
            types[row, :n] = pair.token_type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feed[name] for name in self.input_names}


# --- the reranker ------------------------------------------------------------------------------


def default_max_length(model_id: str, config: Any, tokenizer_max: int | None) -> int:
    """512 for bge-reranker-base/large, 1024 for v2-m3, else the tokenizer's limit; within positions."""
    limit = position_limit(config)
    name = model_id.lower()
    for key, length in MODEL_MAX_LENGTH.items():
        if key in name:
            return min(length, limit)
    if tokenizer_max and 0 < tokenizer_max < 100_000:
        return min(int(tokenizer_max), limit)
    return min(512, limit)


def position_limit(config: Any) -> int:
    """Longest input the position table allows (RoBERTa-style models offset positions by pad+1)."""
    n = int(getattr(config, "max_position_embeddings", 0) or 512)
    if getattr(config, "model_type", "") in _ROBERTA_LIKE:
        n -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return n


class Reranker(Protocol):
    """What pipelines and the server need from a reranker (a cross-encoder, or the fallback)."""

    available: bool
    model_id: str
    backend: str

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]: ...

    def cache_stats(self) -> dict[str, int]: ...

    def describe(self) -> str: ...


class CrossEncoderReranker:
    """A bge cross-encoder reranker: ``score`` pairs, ``rerank`` passages, sync or async.

    Build it through :func:`load_reranker` (the runtime keeps one per process); it is warmed
    with a real prediction at load. Copies (``copy.copy``/``copy.deepcopy``, as DSPy optimisers make of
    programs) return the same instance: the weights are shared, never duplicated.
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
        if onnx_files_ready(self.onnx_dir, "onnx-fp32") and onnx_input_names(self.onnx_dir) != names:
            remove_onnx_cache(self.onnx_dir)  # exported for other inputs (e.g. a changed tokenizer)
        if not onnx_files_ready(self.onnx_dir, "onnx-fp32"):
            if hf_model is None:
                _, hf_model, _ = self._load(None)
            export_onnx(hf_model, names, self.onnx_dir)
        path = self.onnx_dir / ONNX_FP32_FILE
        if self.backend == "onnx-int8":
            path = quantize_int8(path)
        return OnnxBackend(path, self.backend, names)

    # -- scoring --------------------------------------------------------------------------------
    def encode_pairs(self, query: str, passages: Sequence[str]) -> list[EncodedPair]:
        """The exact token ids the model will see for each pair (for tests, debugging and `doctor`)."""
        return self.encoder.encode(query, passages)

    def _cache_key(self, query: str, text: str) -> tuple[str, ...]:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        return (self.model_key, self.backend, str(self.max_length), str(self.query_max_tokens), query, digest)

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
        texts = list(passages)
        out = np.empty(len(texts), dtype=np.float64)
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            positions.setdefault(text, []).append(i)
        todo: list[tuple[str, tuple[str, ...]]] = []
        for text, where in positions.items():
            key = self._cache_key(query, text)
            hit = self._cache.get(key) if self._cache.maxsize else None
            if hit is None:
                todo.append((text, key))
            else:
                out[where] = hit
        if todo:
            logits = self._predict(query, [text for text, _ in todo])
            for (text, key), value in zip(todo, logits.tolist(), strict=True):
                out[positions[text]] = value
                self._cache.put(key, value)
        return out

    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        """All ``passages`` rescored, best first, cut to ``top_n`` (None = keep all).

        Each returned passage is a copy with ``score`` = ``rerank_score`` = the logit, ``relevance`` =
        float64 sigmoid, ``reranked=True``, and its original ``retrieval_rank``/``retrieval_score``
        (filled from the input order when the caller left them unset). Ties keep retrieval order.
        """
        passages = list(passages)
        top_n = _check_top_n(top_n, len(passages))
        if not passages:
            return []
        logits = self.score(query, [p.text for p in passages])
        relevance = relevance_from_logits(logits)
        order = sorted(range(len(passages)), key=lambda i: (-logits[i], i))[:top_n]
        return [
            _with_retrieval_view(passages[i], i).model_copy(
                update={
                    "score": float(logits[i]),
                    "rerank_score": float(logits[i]),
                    "relevance": float(relevance[i]),
                    "reranked": True,
                }
            )
            for i in order
        ]



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


_fallback_warned = False
_fallback_warned_lock = threading.Lock()


def _reset_fallback_warning() -> None:
    """Let the next fallback use warn again (tests)."""
    global _fallback_warned
    with _fallback_warned_lock:
        _fallback_warned = False


class FallbackReranker:
    """Stands in when the weights are missing and ``reranker_on_missing="fallback"``.

    Keeps the retrieval (hybrid) order, marks every passage ``reranked=False`` and logs one warning per
    process (logger ``rag_app.models.rerank``) the first time it is used. :meth:`score` raises, since there is
    no model to score with.
    """

    available = False
    backend = "none"

    def __init__(self, reason: str, model: str = "", revision: str | None = None) -> None:
        self.reason = reason
        self.model_id = model
        self.revision = revision

    def acknowledge(self) -> None:
        """The caller has already shown the user why (the demo's models banner): skip the log warning."""
        global _fallback_warned
        with _fallback_warned_lock:
            _fallback_warned = True

    def _warn_once(self) -> None:
        global _fallback_warned
        with _fallback_warned_lock:
            if _fallback_warned:
                return
            _fallback_warned = True
        logger.warning("reranker unavailable, passages keep their retrieval order: %s", self.reason)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        raise ModelNotAvailableError(self.reason)


    def rerank(self, query: str, passages: Sequence[Passage], top_n: int | None = None) -> list[Passage]:
        passages = list(passages)
        top_n = _check_top_n(top_n, len(passages))
        self._warn_once()
        return [
            _with_retrieval_view(p, i).model_copy(update={"reranked": False})
            for i, p in enumerate(passages[:top_n])
        ]


    def cache_stats(self) -> dict[str, int]:
        return {"hits": 0, "misses": 0, "size": 0, "maxsize": 0, "pairs_scored": 0, "batches": 0}

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        return f"unavailable ({self.model_id}{rev}), keeping retrieval order: {self.reason}"


    def __repr__(self) -> str:
        return f"FallbackReranker({self.describe()})"




def _check_top_n(top_n: int | None, n: int) -> int:
    if top_n is None:
        return n
    top_n = int(top_n)
    if top_n < 1:
        raise InputError(f"top_n must be at least 1, got {top_n}")
    return min(top_n, n)


def _with_retrieval_view(passage: Passage, index: int) -> Passage:
    """Passages that never went through a retriever get their input position as retrieval rank."""
    if passage.retrieval_rank:
        return passage
    return passage.model_copy(update={"retrieval_rank": index + 1, "retrieval_score": passage.score})


# --- process-wide sharing ----------------------------------------------------------------------


def load_reranker(settings: Settings) -> Reranker:
    """Build (and warm) the reranker these settings name; a new instance, with its own score cache.

    :class:`rag_app.runtime.Runtime` owns and shares it. Missing weights raise
    :class:`ModelNotAvailableError` (``reranker_on_missing="fail"``) or give a :class:`FallbackReranker`
    (``"fallback"``).
    """
    try:
        return CrossEncoderReranker.from_settings(settings, cache=ScoreCache(settings.rerank_cache_size))
    except ModelNotAvailableError as exc:
        if settings.reranker_on_missing != "fallback":
            raise
        return FallbackReranker(str(exc), settings.reranker_model, settings.reranker_revision)


def unavailable_note(reranker: Reranker) -> str | None:
    """The one note every caller shows when passages kept retrieval order; ``None`` when reranked."""
    return None if reranker.available else f"reranker {reranker.describe()}"


__all__ = [
    "CrossEncoderReranker",
    "EncodedPair",
    "FallbackReranker",
    "PairEncoder",
    "Reranker",
    "ScoreCache",
    "load_reranker",
    "relevance_from_logits",
    "unavailable_note",
]
