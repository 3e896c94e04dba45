"""Embedders: the real bundled MiniLM, and the Ollama backend against a loopback stand-in server.

The Ollama server cannot be installed here, so the Ollama tests talk to ``OllamaStandIn`` (a STAND-IN
that speaks Ollama's HTTP API with fake deterministic embeddings) through the real ``ollama`` client.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rag_app.core.errors import InputError, ModelNotAvailableError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.models.embeddings import load_embedder
from rag_app.models.embeddings.base import Embedder, check_query
from rag_app.models.embeddings.ollama import OllamaEmbedder
from rag_app.models.embeddings.sentence_transformers import SentenceTransformerEmbedder
from rag_app.runtime import Runtime
from tests.ollama_standin import OllamaStandIn, count_tokens, dead_host


def test_bundled_minilm_embeds_normalised_384d(minilm: Embedder) -> None:
    assert minilm.model_id == "bundled:all-MiniLM-L6-v2"
    assert minilm.dimension == 384
    docs = minilm.embed_documents(
        ["The Tower card signals sudden upheaval.", "Nvidia reports quarterly earnings after the close."]
    )
    assert docs.shape == (2, 384) and docs.dtype == np.float32
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    query = minilm.embed_query("tarot card about sudden change")
    assert query @ docs[0] > query @ docs[1] + 0.1


def test_bf16_vectors_match_fp32(minilm: Embedder) -> None:
    texts = [
        "Sage reviews pull requests and flags risky changes.",
        "Saturn return arrives near age 29.",
        "AMD guided above consensus for the data-center segment.",
    ]
    fp32 = SentenceTransformerEmbedder("bundled:all-MiniLM-L6-v2", precision="float32")
    bf16 = SentenceTransformerEmbedder("bundled:all-MiniLM-L6-v2", precision="bfloat16")
    assert bf16.precision == "bfloat16"
    # MiniLM is a BertModel: in bf16 on CPU it runs the reranker's fused, prepacked layers.
    assert fp32.optimizations == () and bf16.optimizations == ("fused-layers", "prepacked-weights")
    cosines = (fp32.embed_documents(texts) * bf16.embed_documents(texts)).sum(axis=1)
    assert cosines.min() > 0.99, cosines  # measured ~0.9999
    # Many texts of mixed lengths in one batch (padding inside the fused attention), and a query.
    many = [" ".join(texts[: 1 + i % 3]) * (1 + i % 4) for i in range(40)]
    cosines = (fp32.embed_documents(many) * bf16.embed_documents(many)).sum(axis=1)
    assert cosines.min() > 0.99, cosines
    assert float(fp32.embed_query(texts[0]) @ bf16.embed_query(texts[0])) > 0.99


def test_runtime_shares_one_embedder_and_missing_models_say_how_to_fix(tmp_path) -> None:
    runtime = Runtime(Settings())
    assert runtime.embedder is runtime.embedder  # the runtime loads it once and shares it
    with pytest.raises(ModelNotAvailableError) as err:
        load_embedder(Settings(embedder_model="nomic-ai/nomic-embed-text-v1.5", hf_cache_dir=tmp_path))
    message = str(err.value)
    assert "nomic-ai/nomic-embed-text-v1.5" in message and str(tmp_path) in message
    assert "rag-app models pull" in message
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_embedder(Settings(embedder_model=str(tmp_path / "no-such-model")))


def test_query_checks() -> None:
    settings = Settings()
    assert check_query("  hi ", settings) == "hi"
    with pytest.raises(InputError, match="empty"):
        check_query(" \n ", settings)
    with pytest.raises(InputError, match="8001 characters, over the limit of 8000"):
        check_query("x" * 8001, settings)


def test_ollama_backend_prefixes_batches_and_clips() -> None:
    with OllamaStandIn() as srv:
        emb = OllamaEmbedder("nomic-embed-text", host=srv.host, batch_size=2)
        vectors = emb.embed_documents(["alpha beta", "gamma", "delta", "word " * 5000])
        assert vectors.shape == (4, 768) and emb.dimension == 768
        assert emb.model_id == "ollama:nomic-embed-text"
        bodies = srv.requests_to("/api/embed")
        assert len(bodies) == 2  # 4 inputs in batches of 2
        sent = [text for body in bodies for text in body["input"]]
        assert all(text.startswith("search_document: ") for text in sent)
        assert count_tokens(sent[3]) <= 2048  # clipped client-side instead of failing the batch
        srv.clear_requests()
        query = emb.embed_query("alpha")
        assert srv.requests_to("/api/embed")[0]["input"] == ["search_query: alpha"]
        assert query @ vectors[0] > query @ vectors[1]


def test_ollama_retries_then_succeeds_and_reports_unknown_model() -> None:
    with OllamaStandIn() as srv:
        emb = OllamaEmbedder("nomic-embed-text", host=srv.host, retries=2)
        srv.fail_next(2, status=503)
        assert emb.embed_query("hello").shape == (768,)
        srv.fail_next(3, status=503)
        with pytest.raises(ServiceUnavailableError, match="HTTP 503"):
            emb.embed_query("hello")
        missing = OllamaEmbedder("mxbai-embed-large", host=srv.host, retries=0)
        with pytest.raises(ModelNotAvailableError, match="ollama pull mxbai-embed-large"):
            missing.embed_query("hello")


def test_ollama_unreachable_host_fails_fast_with_fix() -> None:
    host = dead_host()
    emb = OllamaEmbedder("nomic-embed-text", host=host, retries=1, timeout_s=2)
    start = time.perf_counter()
    with pytest.raises(ServiceUnavailableError) as err:
        emb.embed_query("hello")
    assert time.perf_counter() - start < 5
    assert host in str(err.value) and "ollama serve" in str(err.value)


def test_ollama_timeout_is_a_clear_error() -> None:
    with OllamaStandIn() as srv:
        srv.delay_s = 2.0
        emb = OllamaEmbedder("nomic-embed-text", host=srv.host, retries=0, timeout_s=0.3)
        with pytest.raises(ServiceUnavailableError, match="did not answer"):
            emb.embed_query("hello")
