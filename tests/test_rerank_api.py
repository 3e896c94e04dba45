"""Issue 13: ``POST /v1/rerank``, the runtime's cross-encoder as a service in Cohere's rerank shape.

The real app under uvicorn with a real reranker: the tiny random-weight cross-encoder from
``tiny_models`` (real tokenizer, real BERT forward pass; its scores are only meaningful as "the model's
scores", which is what is checked: the service returns exactly what the reranker computes). Clients: a
plain httpx client and LiteLLM's Cohere rerank provider (``litellm.rerank``). Without weights (the
fallback reranker) the route answers 503 instead of inventing scores.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import numpy as np
import pytest

from rag_app.core.settings import Settings
from rag_app.models.rerank import load_reranker
from rag_app.models.rerank.base import relevance_from_logits
from rag_app.server.app import create_app
from rag_app.server.auth import add_key
from tests.conftest import make_test_settings
from tests.live_server import LiveServer
from tests.test_server import metric_value

pytestmark = pytest.mark.timeout(300)

QUERY = "How do I rotate an API key?"
DOCUMENTS: list[Any] = [
    "Pricing plans are billed monthly.",
    {"text": "Rotate a key in Settings > API keys, then revoke the old one.", "id": "doc-2"},
    "Forge jobs run for at most 6 hours.",
    "API keys can be rotated without downtime.",
    "",
]


def texts() -> list[str]:
    return [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]


@pytest.fixture(scope="module")
def settings(sample_index_dir: Path, tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("rerank-api") / "data"
    shutil.copytree(sample_index_dir, data_dir, ignore=shutil.ignore_patterns("api_keys.json*"))
    return make_test_settings(
        data_dir,
        sites={"builddaily": ["resources"]},
        reranker_model=str(tiny_path),
        reranker_revision=None,
        max_message_chars=300,
        max_query_chars=200,
    )


@pytest.fixture(scope="module")
def key(settings: Settings) -> str:
    return add_key(settings, "rerank-client", ["builddaily"])


@pytest.fixture(scope="module")
def live(settings: Settings, key: str) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer, key: str) -> Iterator[httpx.Client]:
    with live.client(headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def expected(settings: Settings) -> np.ndarray:
    """The relevance the same cross-encoder gives each document, computed in-process."""
    reranker = load_reranker(settings)
    assert reranker.available
    return relevance_from_logits(reranker.score(QUERY, texts()))


def test_rerank_scores_with_the_runtime_reranker(http: httpx.Client, expected: np.ndarray) -> None:
    r = http.post(
        "/v1/rerank",
        json={
            "model": "anything",
            "query": QUERY,
            "documents": DOCUMENTS,
            "top_n": 3,
            "return_documents": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == r.headers["x-request-id"] == body["meta"]["request_id"]
    order = sorted(range(len(DOCUMENTS)), key=lambda i: (-expected[i], i))[:3]
    assert [x["index"] for x in body["results"]] == order
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
        assert result["document"] == {"text": texts()[result["index"]]}
    meta = body["meta"]
    assert meta["model"].endswith("tiny-ce") and "tiny-ce" in meta["reranker"]
    assert meta["api_version"] == {"version": "1"} and meta["timings"]["rerank_ms"] >= 0

    r = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    results = r.json()["results"]
    assert len(results) == len(DOCUMENTS) and all("document" not in x for x in results)
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)


def test_rerank_uses_the_score_cache_and_reports_metrics(http: httpx.Client) -> None:
    documents = [f"Cache probe document number {i} about API keys." for i in range(12)]
    before = metric_value(http.get("/metrics").text, "rag_rerank_cache_hits_total") or 0.0
    stages = (
        metric_value(http.get("/metrics").text, "rag_stage_duration_seconds_count", stage="rerank") or 0.0
    )
    first = http.post("/v1/rerank", json={"query": "cache probe", "documents": documents}).json()
    again = http.post("/v1/rerank", json={"query": "cache probe", "documents": documents}).json()
    assert first["results"] == again["results"]
    metrics = http.get("/metrics").text
    assert metric_value(metrics, "rag_rerank_cache_hits_total") >= before + len(documents)
    assert metric_value(metrics, "rag_stage_duration_seconds_count", stage="rerank") >= stages + 2


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"query": QUERY, "documents": []}, "documents", "invalid_request"),
        ({"query": QUERY, "documents": ["a"] * 1001}, "documents", "invalid_request"),
        ({"query": "   ", "documents": ["a"]}, "query", "invalid_request"),
        ({"query": QUERY, "documents": ["a", {"text": "x" * 301}]}, "documents[1].text", "document_too_long"),
        ({"query": QUERY, "documents": ["x" * 301]}, "documents[0]", "document_too_long"),
        ({"query": "q" * 201, "documents": ["a"]}, "query", "query_too_long"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n", "invalid_request"),
        ({"query": QUERY, "documents": ["a"], "top_n": "2"}, "top_n", "invalid_request"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0]", "invalid_request"),
    ],
)
def test_rerank_input_limits(http: httpx.Client, body: dict[str, Any], field: str, code: str) -> None:
    r = http.post("/v1/rerank", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["field"].startswith(field), error


def test_litellm_cohere_rerank_against_the_server(live: LiveServer, key: str, expected: np.ndarray) -> None:
    """LiteLLM's Cohere provider posts to ``api_base`` as is when it ends in ``/v1/rerank``."""
    response = litellm.rerank(
        model="cohere/rag-rerank",
        query=QUERY,
        documents=texts(),
        top_n=2,
        api_base=f"{live.url}/v1/rerank",
        api_key=key,
    )
    order = sorted(range(len(DOCUMENTS)), key=lambda i: (-expected[i], i))[:2]
    assert [r["index"] for r in response.results] == order
    assert [r["relevance_score"] for r in response.results] == pytest.approx(expected[order], abs=1e-5)

    with pytest.raises(Exception, match="invalid API key"):
        litellm.rerank(
            model="cohere/rag-rerank",
            query=QUERY,
            documents=texts(),
            api_base=f"{live.url}/v1/rerank",
            api_key="rag-wrong-key",
        )


def test_rerank_without_weights_is_a_503(sample_index_dir: Path) -> None:
    settings = make_test_settings(sample_index_dir, sites={"builddaily": ["resources"]})
    with LiveServer(create_app(settings)) as server, server.client() as http:
        r = http.post("/v1/rerank", json={"query": QUERY, "documents": ["a", "b"]})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "reranker_unavailable" and "reranker_model" in error["message"]
        assert "results" not in r.json()
