"""Issue 14: the ``remote`` embedder (OpenAI-compatible ``/v1/embeddings``), and both remote models in
the real ingest -> search -> rerank path.

The server is ``TeiStandIn`` (``tests/tei_standin.py``), a STAND-IN for Hugging Face TEI (which cannot
run here) that embeds with the real bundled all-MiniLM-L6-v2 through sentence-transformers and reranks
with the tiny cross-encoder from ``tiny_models``; the index is a real LanceDB table on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_app.core.errors import EmbedderMismatchError, InputError, ServiceUnavailableError
from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import RemoteEmbedder, load_embedder
from rag_app.models.embeddings.sentence_transformers import SentenceTransformerEmbedder
from rag_app.models.remote_http import RemoteResponseError
from rag_app.runtime import Runtime
from tests.conftest import make_test_settings
from tests.tei_standin import DEFAULT_SERVED_MODEL, TeiStandIn

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "Sage reviews pull requests and flags risky changes.",
    "Saturn return arrives near age 29.",
    "AMD guided above consensus for the data-center segment.",
    "Rotate a key in Settings > API keys, then revoke the old one.",
    "Forge jobs run for at most 6 hours.",
]
DOCS = {
    "keys.md": "# API keys\n\nRotate a key in Settings > API keys, then revoke the old one.",
    "forge.md": "# Forge\n\nForge jobs run for at most 6 hours and are billed per minute of compute.",
    "tarot.md": "# The Tower\n\nThe Tower card signals sudden upheaval and the collapse of false structures.",
    "earnings.md": "# Earnings\n\nAMD guided above consensus for the data-center segment this quarter.",
}
OTHER_MODEL = "BAAI/bge-small-en-v1.5"


@pytest.fixture(scope="module")
def fp32_minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("bundled:all-MiniLM-L6-v2", precision="float32")


def remote_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    """Offline test settings with both models on the server at ``url``; no hub cache (so the remote
    embedder counts tokens with the bundled tokenizer)."""
    values: dict[str, Any] = {
        "sites": {"docs": ["pages"]},
        "hf_cache_dir": tmp_path / "empty-hf-cache",
        "embedder_backend": "remote",
        "embedder_url": url,
        "embedder_model": DEFAULT_SERVED_MODEL,
        "reranker_backend": "remote",
        "reranker_url": url,
        "reranker_api": "tei",
        "reranker_model": "tiny-ce",
        "remote_timeout_s": 5.0,
        "remote_retries": 0,
    }
    values.update(overrides)
    return make_test_settings(tmp_path / "rag", **values)


def test_remote_vectors_equal_the_in_process_model(
    tei: TeiStandIn, fp32_minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    embedder = load_embedder(remote_settings(tmp_path, tei.url, remote_batch_size=2))
    assert isinstance(embedder, RemoteEmbedder)
    # The served checkpoint's vectors are the in-process model's: same space, so the same model id.
    assert embedder.model_id == DEFAULT_SERVED_MODEL and embedder.dimension == 384
    docs = embedder.embed_documents(TEXTS)
    assert docs.shape == (5, 384) and docs.dtype == np.float32
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    cosines = (docs * fp32_minilm.embed_documents(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.999, cosines
    assert float(embedder.embed_query(TEXTS[1]) @ fp32_minilm.embed_query(TEXTS[1])) > 0.999
    sizes = [len(body["input"]) for path, body in tei.requests if path == "/v1/embeddings"]
    assert sizes == [1, 2, 2, 1, 1]  # the dimension probe, 5 texts 2 per request, the query
    assert all(body["model"] == DEFAULT_SERVED_MODEL for _, body in tei.requests)
    # A text longer than the context is clipped at a token boundary before it is sent.
    long_text = " ".join(["upheaval"] * 3000)
    embedder.embed_documents([long_text])
    sent = tei.requests[-1][1]["input"][0]
    assert long_text.startswith(sent) and len(embedder.token_spans(sent)) == embedder.max_tokens - 2


def indexed(tmp_path: Path, tei: TeiStandIn, **overrides: Any) -> Settings:
    """Settings with both models remote, and :data:`DOCS` ingested (embedded by the server)."""
    folder = tmp_path / "pages"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    settings = remote_settings(tmp_path, tei.url, **overrides)
    report = ingest_paths(settings, "docs", "pages", [folder], progress=False)
    assert report.chunks_written >= len(DOCS), report.summary()
    return settings


def test_the_model_guard_refuses_another_served_model(tei: TeiStandIn, tmp_path: Path) -> None:
    settings = indexed(tmp_path, tei)
    runtime = Runtime(settings)
    found = runtime.search("docs", "how long may a forge job run", mode="vector", top_n=2)
    assert found["passages"][0]["title"] == "Forge"  # the served MiniLM's vectors retrieve
    reranked = runtime.search("docs", "how long may a forge job run", rerank=True, top_n=2)
    assert reranked["reranked"] and not reranked["notes"]  # (the tiny reranker's order is arbitrary)

    # The server now serves another model under the same URL: refused before any vector is used.
    tei.served_model = OTHER_MODEL
    with pytest.raises(EmbedderMismatchError) as err:
        Runtime(settings).search("docs", "forge jobs")
    assert OTHER_MODEL in str(err.value) and DEFAULT_SERVED_MODEL in str(err.value)
    assert "RAG_EMBEDDER_MODEL" in str(err.value)
    # Configured for that model, the table built with the first one refuses it, for search and ingest.
    other = settings.model_copy(update={"embedder_model": OTHER_MODEL})
    with pytest.raises(EmbedderMismatchError, match="was built with embedder"):
        Runtime(other).search("docs", "forge jobs")
    with pytest.raises(EmbedderMismatchError):
        ingest_paths(other, "docs", "pages", [tmp_path / "pages"], progress=False, force=True)


def test_a_failing_reranker_server_keeps_retrieval_order_with_a_note(tei: TeiStandIn, tmp_path: Path) -> None:
    settings = indexed(tmp_path, tei, reranker_on_missing="fallback")
    runtime = Runtime(settings)
    query = "sudden upheaval card"
    plain = runtime.search("docs", query)  # retrieval order
    tei.fail_next(1, 500, path="/rerank")
    failing = runtime.search("docs", query, rerank=True, top_n=3)
    assert not failing["reranked"] and not any(p["reranked"] for p in failing["passages"])
    assert [p["id"] for p in failing["passages"]] == [p["id"] for p in plain["passages"]][:3]
    [note] = failing["notes"]
    assert "keeping retrieval order" in note and "HTTP 500" in note and f"{tei.url}/rerank" in note
    ok = runtime.search("docs", query, rerank=True, top_n=3)
    assert ok["reranked"] and all(p["reranked"] for p in ok["passages"]) and not ok["notes"]
    # reranker_on_missing="fail": the error reaches the caller (CLI exit 6, HTTP 503).
    strict = Runtime(settings.model_copy(update={"reranker_on_missing": "fail"}))
    tei.fail_next(1, 500, path="/rerank")
    with pytest.raises(ServiceUnavailableError, match="HTTP 500"):
        strict.search("docs", query, rerank=True, top_n=3)


def test_wrong_answers_and_dead_servers_are_clear_errors(tei: TeiStandIn, tmp_path: Path) -> None:
    embedder = load_embedder(remote_settings(tmp_path, tei.url, remote_retries=1))
    assert embedder.dimension == 384
    tei.mode = "wrong_count"
    with pytest.raises(RemoteResponseError, match="2 embeddings for 3 inputs"):
        embedder.embed_documents(TEXTS[:3])
    tei.mode = "error"
    with pytest.raises(ServiceUnavailableError) as err:
        embedder.embed_documents(TEXTS[:3])
    assert f"{tei.url}/v1/embeddings failed after 2 attempts: HTTP 500" in str(err.value)
    assert "RAG_EMBEDDER_URL" in str(err.value)
    tei.mode = "hang"
    hanging = load_embedder(remote_settings(tmp_path, tei.url, remote_timeout_s=0.5))
    with pytest.raises(ServiceUnavailableError, match=r"no answer within 0\.5s"):
        hanging.embed_query("anything")
    # The served vectors change shape between calls (a truncating option): refused, not mixed.
    tei.mode = "ok"
    tei.dimensions = 128
    with pytest.raises(EmbedderMismatchError, match=r"128-d vectors .* earlier answers were 384-d"):
        embedder.embed_query("anything")


def test_remote_needs_a_url_and_the_served_model_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="RAG_EMBEDDER_URL"):
        load_embedder(Settings(data_dir=tmp_path, embedder_backend="remote", embedder_model="m"))
    with pytest.raises(InputError, match="RAG_EMBEDDER_MODEL"):
        load_embedder(
            Settings(data_dir=tmp_path, embedder_backend="remote", embedder_url="http://127.0.0.1:9")
        )
