"""LanceDBRetriever over the real builddaily sample index: a dspy.Module returning typed passages.

The index is built twice, on local disk and on an s3:// database on the loopback moto server, and
every test runs on each."""

from __future__ import annotations

import json

import dspy
import pytest

from rag_app.core.settings import Settings
from rag_app.core.types import Passage
from rag_app.ingest.pipeline import ingest_paths
from rag_app.retrieval.retriever import LanceDBRetriever
from tests.conftest import SAMPLE_DATA, STORE_KINDS, store_settings_for


@pytest.fixture(scope="module", params=STORE_KINDS)
def builddaily(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Settings:
    root = tmp_path_factory.mktemp(f"retrieve-{request.param}")
    settings = store_settings_for(request.param, root / "rag", request, programs_dir=root / "programs")
    ingest_paths(
        settings, "builddaily", "resources", [SAMPLE_DATA / "builddaily" / "resources"], progress=False
    )
    return settings


def test_forward_returns_top_20_typed_passages(builddaily: Settings) -> None:
    retriever = LanceDBRetriever(builddaily, "builddaily")
    assert isinstance(retriever, dspy.Module)
    pred = retriever(query="How much does Sage Daily cost?")
    assert isinstance(pred, dspy.Prediction)
    assert len(pred.passages) == 20 and all(isinstance(p, Passage) for p in pred.passages)
    assert [p.retrieval_rank for p in pred.passages] == list(range(1, 21))
    scores = [p.score for p in pred.passages]
    assert scores == sorted(scores, reverse=True)
    top = pred.passages[0]
    assert top.site == "builddaily" and top.collection == "resources" and top.title and top.text
    assert {"date", "tags", "tickers"} <= set(top.metadata)
    assert set(pred.timings) == {"embed_ms", "search_ms"}


def test_modes_differ_and_hybrid_fuses_both(builddaily: Settings) -> None:
    retriever = LanceDBRetriever(builddaily, "builddaily")
    query = "Which plans include single sign-on?"
    vector = {p.id for p in retriever(query=query, mode="vector", k=10).passages}
    fts = {p.id for p in retriever(query=query, mode="fts", k=10).passages}
    hybrid = {p.id for p in retriever(query=query, mode="hybrid", k=10).passages}
    assert hybrid <= vector | fts
    assert hybrid & (fts - vector) or hybrid & (vector - fts) or vector == fts


def test_saved_retrieval_config_sets_defaults(builddaily: Settings) -> None:
    path = builddaily.programs_dir / "builddaily" / "retrieval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"best": {"k": 7, "mode": "fts", "rerank": False}, "trials": []}))
    try:
        retriever = LanceDBRetriever(builddaily, "builddaily")
        pred = retriever(query="pricing")
        assert (retriever.default_k, pred.mode, len(pred.passages)) == (7, "fts", 7)
        assert LanceDBRetriever(builddaily, "builddaily", use_saved_config=False).default_k == 20
    finally:
        path.unlink()


def test_k_bounds(builddaily: Settings) -> None:
    from rag_app.core.errors import InputError

    with pytest.raises(InputError, match="k must be between 1 and 1000"):
        LanceDBRetriever(builddaily, "builddaily")(query="x", k=0)


def test_missing_table_returns_nothing(store_settings: Settings) -> None:
    assert LanceDBRetriever(store_settings, "sagedaily")(query="The Tower").passages == []
