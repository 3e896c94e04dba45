"""The reranking stage on a tiny offline cross-encoder: loading, ordering, truncation, duplicates, the
score cache, degraded and failing modes, threads, and the DSPy modules over a test retriever."""

from __future__ import annotations

import copy
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import numpy as np
import pytest

from rag_app.core.errors import ModelNotAvailableError, RagError
from rag_app.core.hardware import cpu_has_bf16, cuda_available
from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.models.rerank import fallback as fallback_module
from rag_app.models.rerank import load_reranker
from rag_app.models.rerank.backends.selection import resolve_backend
from rag_app.models.rerank.base import relevance_from_logits
from rag_app.models.rerank.cache import ScoreCache
from rag_app.models.rerank.cross_encoder import CrossEncoderReranker
from rag_app.models.rerank.fallback import FallbackReranker
from rag_app.models.rerank.pairs import default_max_length
from rag_app.retrieval.pipeline import RetrieveThenRerank
from rag_app.runtime import Runtime

QUERY = "how do plants turn sunlight into chemical energy"
TEXTS = [
    "Photosynthesis converts light energy, water and carbon dioxide into glucose and oxygen.",
    "Paris is the capital of France and is known for the Eiffel Tower.",
    "Chlorophyll absorbs blue and red light and reflects green light.",
    "The Federal Reserve raised interest rates by a quarter point.",
    "FastAPI returns a 422 response when a request body fails validation.",
    "Mitochondria produce ATP from glucose and oxygen during cellular respiration.",
    "The Calvin cycle fixes carbon dioxide into sugars in the chloroplast stroma.",
    "Tarot's Tower card stands for sudden upheaval and revelation.",
]


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def reranker(tiny_path: Path) -> CrossEncoderReranker:
    """torch-fp32, score cache off: every call runs the model."""
    return CrossEncoderReranker(str(tiny_path), revision=None, backend="torch-fp32", cache_size=0)


def settings_for(tmp_path: Path, model: str, **overrides) -> Settings:
    return Settings(
        data_dir=tmp_path / "rag",
        reranker_model=model,
        reranker_revision=None,
        reranker_backend=overrides.pop("reranker_backend", "torch-fp32"),
        hf_cache_dir=tmp_path / "hf-empty",
        lm_model=None,
        **overrides,
    )


def passages_from(texts: list[str]) -> list[Passage]:
    """Retrieval-ordered passages with decreasing retrieval scores, as a retriever returns them."""
    return [
        Passage(
            id=f"p{i}",
            doc_id=f"d{i}",
            text=text,
            score=1.0 - i / 100,
            retrieval_rank=i + 1,
            retrieval_score=1.0 - i / 100,
        )
        for i, text in enumerate(texts)
    ]


class CountingBackend:
    """Wraps a reranker's backend to count the pairs (and threads) the model actually sees."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.input_names = inner.input_names
        self.pairs = 0
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def run(self, inputs):
        with self._lock:
            self.pairs += len(inputs["input_ids"])
            self.threads.add(threading.get_ident())
        return self.inner.run(inputs)


@pytest.fixture
def counting(reranker: CrossEncoderReranker):
    original = reranker._backend
    counter = CountingBackend(original)
    reranker._backend = counter
    yield counter
    reranker._backend = original


# --- loading -----------------------------------------------------------------------------------


def test_the_runtime_loads_a_local_dir_once_and_shares_it(tiny_path: Path, tmp_path: Path) -> None:
    runtime = Runtime(settings_for(tmp_path, str(tiny_path)))
    first = runtime.reranker
    assert isinstance(first, CrossEncoderReranker)
    assert first.available is True
    assert runtime.reranker is first and runtime.pipeline("builddaily").reranker is first
    described = first.describe()
    assert str(tiny_path) in described and "backend=torch-fp32" in described and "max_length=512" in described
    # DSPy optimisers deep-copy programs: the model must be shared, not duplicated.
    assert copy.deepcopy(first) is first and copy.copy(first) is first


def test_auto_backend_and_explicit_unsupported_backends() -> None:
    expected = "cuda-fp16" if cuda_available() else "torch-bf16" if cpu_has_bf16() else "onnx-int8"
    assert resolve_backend("auto") == expected
    if not cuda_available():
        with pytest.raises(RagError, match="CUDA"):
            resolve_backend("cuda-fp16")
    if not cpu_has_bf16():
        with pytest.raises(RagError, match="bf16"):
            resolve_backend("torch-bf16")


def test_default_max_length_per_model(reranker: CrossEncoderReranker) -> None:
    from transformers import XLMRobertaConfig

    xlmr = XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)
    m3 = XLMRobertaConfig(max_position_embeddings=8194, pad_token_id=1)
    assert default_max_length("BAAI/bge-reranker-base", xlmr, 512) == 512
    assert default_max_length("BAAI/bge-reranker-large", xlmr, 512) == 512
    assert default_max_length("BAAI/bge-reranker-v2-m3", m3, 8192) == 1024
    assert default_max_length("/models/my-ce", xlmr, 10**30) == 512  # "no limit" tokenizers
    assert reranker.max_length == 512


def test_max_length_setting_overrides_and_is_clamped(tiny_path: Path) -> None:
    short = CrossEncoderReranker(str(tiny_path), revision=None, backend="torch-fp32", max_length=64)
    assert short.max_length == 64
    assert short.query_max_tokens <= (64 - 3) // 2
    long = CrossEncoderReranker(str(tiny_path), revision=None, backend="torch-fp32", max_length=4096)
    assert long.max_length == 512  # the tiny model has 512 positions
    pair = long.encoder.encode(QUERY, ["word " * 3000])[0]
    assert len(pair.input_ids) == 512


# --- scores and ordering -----------------------------------------------------------------------


def test_scores_and_order_match_cross_encoder_predict(
    tiny_path: Path, reranker: CrossEncoderReranker
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(tiny_path), device="cpu")
    expected = ce.predict([(QUERY, t) for t in TEXTS], activation_fn=torch.nn.Identity())
    logits = reranker.score(QUERY, TEXTS)
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert np.ptp(logits) > 0.05, "the tiny model should spread its scores"

    ranked = reranker.rerank(QUERY, passages_from(TEXTS))
    assert [p.text for p in ranked] == [TEXTS[i] for i in np.argsort(-expected, kind="stable")]
    scores = [p.rerank_score for p in ranked]
    assert scores == sorted(scores, reverse=True)
    # CrossEncoder.predict's default activation (sigmoid) gives the same order as our relevance.
    probabilities = ce.predict([(QUERY, t) for t in TEXTS])
    assert list(np.argsort(-probabilities, kind="stable")) == list(np.argsort(-logits, kind="stable"))


def test_relevance_is_a_float64_sigmoid_of_the_logit() -> None:
    logits = np.array([-800.0, -20.0, 0.0, 2.5, 20.0, 800.0])
    rel = relevance_from_logits(logits)
    assert rel.dtype == np.float64
    assert rel[2] == 0.5
    assert 0.0 < rel[1] < 1e-8 and 1.0 - 1e-8 < rel[4] < 1.0  # float32 would round these to 0 and 1
    assert rel[0] == 0.0 and rel[5] == 1.0
    np.testing.assert_allclose(rel[3], 1.0 / (1.0 + np.exp(-2.5)), rtol=1e-15)


def test_a_5000_word_query_still_leaves_the_passage(reranker: CrossEncoderReranker) -> None:
    long_query = " ".join(["photosynthesis"] * 2500 + ["chlorophyll"] * 2500)
    passage = TEXTS[0]
    full = len(reranker.encoder.encode("", [passage])[0].input_ids) - 3
    pair = reranker.encoder.encode(long_query, [passage])[0]
    assert pair.query_tokens == reranker.query_max_tokens == 64
    assert pair.passage_tokens == full and not pair.passage_truncated
    assert len(pair.input_ids) == 64 + full + 3
    assert np.isfinite(reranker.score(long_query, [passage])).all()


def test_a_long_passage_is_truncated_to_max_length(reranker: CrossEncoderReranker) -> None:
    long_passage = " ".join(TEXTS * 400)  # ~6000 tokens
    pairs = reranker.encoder.encode(QUERY, [long_passage, TEXTS[1]])
    assert len(pairs[0].input_ids) == reranker.max_length
    assert pairs[0].passage_truncated and not pairs[1].passage_truncated
    assert pairs[0].query_tokens == pairs[1].query_tokens  # the query is never cut for the passage
    scores = reranker.score(QUERY, [long_passage, TEXTS[1]])
    assert np.isfinite(scores).all()


def test_length_sorted_batches_give_the_same_scores(tiny_path: Path, reranker: CrossEncoderReranker) -> None:
    mixed = [TEXTS[0] * n for n in (2, 9, 3, 14, 5)] + TEXTS
    one_by_one = np.array([reranker.score(QUERY, [t])[0] for t in mixed])
    batched = CrossEncoderReranker(
        str(tiny_path), revision=None, backend="torch-fp32", cache_size=0, batch_size=3
    )
    counter = CountingBackend(batched._backend)
    widths: list[int] = []
    run = counter.run
    counter.run = lambda inputs: (widths.append(inputs["input_ids"].shape[1]), run(inputs))[1]
    batched._backend = counter
    np.testing.assert_allclose(batched.score(QUERY, mixed), one_by_one, atol=1e-5)
    assert batched.cache_stats()["batches"] == len(widths) == 5  # ceil(13 / 3)
    assert widths == sorted(widths)  # similar lengths together, each padded to its own longest
    lengths = sorted(len(p.input_ids) for p in batched.encoder.encode(QUERY, mixed))
    assert widths == [max(lengths[i : i + 3]) for i in range(0, len(lengths), 3)]


def test_exact_duplicates_are_scored_once(reranker: CrossEncoderReranker, counting: CountingBackend) -> None:
    texts = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2], TEXTS[1]]
    scores = reranker.score(QUERY, texts)
    assert counting.pairs == 3
    assert scores[0] == scores[2] and scores[1] == scores[4]
    ranked = reranker.rerank(QUERY, passages_from(texts))
    assert counting.pairs == 6
    assert len(ranked) == 5  # duplicates are scored once, not dropped


# --- score cache -------------------------------------------------------------------------------


def test_score_cache_hits_and_key_includes_backend(tiny_path: Path, onnx_root: Path) -> None:
    cache = ScoreCache(100)
    fp32 = CrossEncoderReranker(str(tiny_path), revision=None, backend="torch-fp32", cache=cache)
    first = fp32.score(QUERY, TEXTS)
    assert fp32.cache_stats()["misses"] == len(TEXTS) and fp32.cache_stats()["hits"] == 0
    pairs_before = fp32.cache_stats()["pairs_scored"]
    second = fp32.score(QUERY, TEXTS)
    stats = fp32.cache_stats()
    assert stats["hits"] == len(TEXTS) and stats["pairs_scored"] == pairs_before
    np.testing.assert_array_equal(first, second)
    fp32.score("another query", TEXTS[:2])  # the query is part of the key
    assert fp32.cache_stats()["misses"] == len(TEXTS) + 2

    onnx = CrossEncoderReranker(
        str(tiny_path), revision=None, backend="onnx-fp32", cache=cache, onnx_dir=onnx_root
    )
    onnx.score(QUERY, TEXTS)
    assert onnx.cache_stats()["pairs_scored"] == len(TEXTS), "another backend must not reuse fp32's entries"
    assert cache.stats()["size"] == 2 * len(TEXTS) + 2
    assert fp32._cache_key(QUERY, TEXTS[0]) != onnx._cache_key(QUERY, TEXTS[0])


def test_score_cache_is_a_bounded_lru() -> None:
    cache = ScoreCache(2)
    cache.put("a", 1.0)
    cache.put("b", 2.0)
    assert cache.get("a") == 1.0  # a is now the most recent
    cache.put("c", 3.0)
    assert cache.get("b") is None and cache.get("a") == 1.0 and cache.get("c") == 3.0
    assert cache.stats() == {"hits": 3, "misses": 1, "size": 2, "maxsize": 2}
    off = ScoreCache(0)
    off.put("a", 1.0)
    assert off.get("a") is None


def test_loaded_reranker_counts_cache_hits_for_metrics(tiny_path: Path, tmp_path: Path) -> None:
    reranker = load_reranker(settings_for(tmp_path, str(tiny_path)))
    reranker.score(QUERY, TEXTS[:3])
    reranker.score(QUERY, TEXTS[:3])
    stats = reranker.cache_stats()
    assert stats["hits"] == 3 and stats["misses"] == 3


# --- missing models ----------------------------------------------------------------------------


def test_fallback_keeps_retrieval_order_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, str(tmp_path / "no-such-model"), reranker_on_missing="fallback")
    reranker = load_reranker(settings)
    assert isinstance(reranker, FallbackReranker) and reranker.available is False
    assert "no-such-model" in reranker.describe() and "retrieval order" in reranker.describe()
    monkeypatch.setattr(fallback_module, "_fallback_warned", False)
    candidates = passages_from(TEXTS)
    with caplog.at_level(logging.WARNING, logger="rag_app.models.rerank"):
        first = reranker.rerank(QUERY, candidates, top_n=5)
        second = reranker.rerank(QUERY, candidates, top_n=5)
    assert [p.id for p in first] == [p.id for p in second] == [p.id for p in candidates[:5]]
    assert all(p.reranked is False and p.rerank_score is None for p in first)
    assert [p.score for p in first] == [p.score for p in candidates[:5]]
    warnings = [
        r for r in caplog.records if r.name == "rag_app.models.rerank" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    with pytest.raises(ModelNotAvailableError):
        reranker.score(QUERY, TEXTS)
    # A caller that has shown the reason itself (the demo) acknowledges it: no log warning at all.
    monkeypatch.setattr(fallback_module, "_fallback_warned", False)
    caplog.clear()
    reranker.acknowledge()
    with caplog.at_level(logging.WARNING, logger="rag_app.models.rerank"):
        reranker.rerank(QUERY, candidates, top_n=5)
    assert not [r for r in caplog.records if r.name == "rag_app.models.rerank"]


def test_fail_mode_raises_a_helpful_error(tmp_path: Path) -> None:
    hub = settings_for(tmp_path, "BAAI/bge-reranker-base")
    with pytest.raises(ModelNotAvailableError) as info:
        load_reranker(hub)
    message = str(info.value)
    assert "BAAI/bge-reranker-base" in message and "rag-app models pull" in message
    assert str(tmp_path / "hf-empty") in message  # where it looked

    local = settings_for(tmp_path, str(tmp_path / "missing-dir"))
    with pytest.raises(ModelNotAvailableError, match="rag-app models pull"):
        load_reranker(local)


# --- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch-fp32", "auto"])
def test_concurrent_calls_match_a_sequential_call(tiny_path: Path, backend: str) -> None:
    """8 threads at once give the sequential scores, for the reference and for this machine's default
    backend (on a bf16 CPU: the fused, prepacked layers, whose kernels must not share scratch state)."""
    reranker = CrossEncoderReranker(str(tiny_path), revision=None, backend=backend, cache_size=0)
    queries = [f"{QUERY} variant {i}" for i in range(8)]
    sequential = [reranker.score(q, TEXTS) for q in queries]
    barrier = threading.Barrier(8)

    def call(q: str) -> np.ndarray:
        barrier.wait()
        return reranker.score(q, TEXTS)

    for _ in range(3):
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(call, queries))
        for got, want in zip(concurrent, sequential, strict=True):
            np.testing.assert_array_equal(got, want)


class FixedPassagesRetrieverDouble(dspy.Module):
    """Test double for the LanceDB retriever: returns fixed passages and records how it was called."""

    def __init__(self, passages: list[Passage]) -> None:
        super().__init__()
        self.passages = passages
        self.calls: list[dict] = []

    def forward(self, query: str, k: int | None = None, filters=None, mode=None, **kwargs) -> dspy.Prediction:
        self.calls.append({"query": query, "k": k, "filters": filters, "mode": mode, **kwargs})
        found = self.passages[: k or 20]
        return dspy.Prediction(passages=found, timings={"search_ms": 1.0}, mode=mode or "hybrid")


def twenty_candidates(reranker: CrossEncoderReranker) -> list[Passage]:
    """20 passages in retrieval order where the reranker's favourite is ranked 20th by retrieval."""
    texts = [f"{TEXTS[i % len(TEXTS)]} (note {i})" for i in range(20)]
    best = int(np.argmax(reranker.score(QUERY, texts)))
    texts.append(texts.pop(best))  # the reranker's favourite goes last in retrieval order
    return passages_from(texts)


def test_retrieve_then_rerank_reranks_the_whole_window(reranker: CrossEncoderReranker) -> None:
    candidates = twenty_candidates(reranker)
    retriever = FixedPassagesRetrieverDouble(candidates)
    pipeline = RetrieveThenRerank(retriever, reranker, Settings.model_construct())
    pred = pipeline(query=QUERY, filters={"tags": ["x"]}, mode="fts", extra="passed-through")

    assert retriever.calls == [
        {"query": QUERY, "k": 20, "filters": {"tags": ["x"]}, "mode": "fts", "extra": "passed-through"}
    ]
    assert [p.id for p in pred.candidates] == [p.id for p in candidates]
    assert len(pred.passages) == 5 and pred.reranked is True
    top = pred.passages[0]
    assert top.retrieval_rank == 20 and top.id == candidates[-1].id
    assert top.retrieval_score == candidates[-1].retrieval_score
    for p in pred.passages:
        assert p.reranked and p.score == p.rerank_score
        assert 0.0 < p.relevance < 1.0
        assert p.relevance == float(1.0 / (1.0 + np.exp(-np.float64(p.rerank_score))))
        original = next(c for c in candidates if c.id == p.id)
        assert (p.retrieval_rank, p.retrieval_score) == (original.retrieval_rank, original.retrieval_score)
    assert [p.rerank_score for p in pred.passages] == sorted(
        (p.rerank_score for p in pred.passages), reverse=True
    )
    assert {"search_ms", "retrieve_ms", "rerank_ms", "total_ms"} <= set(pred.timings)
    assert all(isinstance(v, float) and v >= 0 for v in pred.timings.values())
    assert pred.mode == "fts"
    assert candidates[-1].reranked is False, "inputs are not mutated"

    smaller = pipeline(query=QUERY, k=10, top_n=3)
    assert retriever.calls[-1]["k"] == 10 and len(smaller.candidates) == 10 and len(smaller.passages) == 3


def test_retrieve_then_rerank_falls_back_to_retrieval_order(reranker: CrossEncoderReranker) -> None:
    candidates = twenty_candidates(reranker)
    degraded = RetrieveThenRerank(
        FixedPassagesRetrieverDouble(candidates), FallbackReranker("weights missing")
    )
    pred = degraded(query=QUERY, top_n=5)
    assert pred.reranked is False
    assert [p.id for p in pred.passages] == [p.id for p in candidates[:5]]
    assert all(not p.reranked for p in pred.passages)


def test_rerank_keeps_the_retrieval_view(reranker: CrossEncoderReranker) -> None:
    candidates = twenty_candidates(reranker)
    best = reranker.rerank(QUERY, candidates, top_n=5)
    assert len(best) == 5 and all(p.reranked for p in best)
    assert best[0].id == candidates[-1].id
    # Passages that never saw a retriever get their input position as retrieval rank.
    bare = [Passage(id=f"b{i}", doc_id="d", text=t, score=0.5) for i, t in enumerate(TEXTS)]
    ranked = reranker.rerank(QUERY, bare, top_n=len(bare))
    assert sorted(p.retrieval_rank for p in ranked) == list(range(1, len(bare) + 1))
    assert all(p.retrieval_score == 0.5 for p in ranked)


def test_torch_backends_fuse_all_but_the_fp32_reference(tiny_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rag_app.models.fused_encoder import FusedEncoderLayer, PackedLinear
    from rag_app.models.rerank.backends.selection import available_backends
    from rag_app.models.rerank.backends.torch import TorchBackend

    names = ["torch-fp32"] + (["torch-bf16"] if "torch-bf16" in available_backends() else [])
    for name in names:
        model = AutoModelForSequenceClassification.from_pretrained(str(tiny_path))
        backend = TorchBackend.create(model, name, ["input_ids", "attention_mask"])
        layer = backend.model.base_model.encoder.layer[0]
        assert isinstance(layer, FusedEncoderLayer) is (name != "torch-fp32"), name
        if name == "torch-bf16":
            assert isinstance(layer.intermediate, PackedLinear)
            assert backend.optimizations == ("fused-layers", "prepacked-weights", "fp32-head")
            assert backend.model.classifier.head.weight.dtype == torch.float32
        else:
            assert backend.optimizations == ()
    described = CrossEncoderReranker(str(tiny_path), revision=None, backend="auto").describe()
    if "torch-bf16" in available_backends():  # what `doctor` and the demo show
        assert "backend=torch-bf16 (auto, fused-layers, prepacked-weights, fp32-head)" in described
