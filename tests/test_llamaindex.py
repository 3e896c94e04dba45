"""Issue 13: the LlamaIndex adapters with llama-index-core's real query engine over the sample index.

``RetrieverQueryEngine`` (with LlamaIndex's ``MockLLM``: no LM runs here, it echoes the prompt) over
:class:`RagAppRetriever` and :class:`RagAppRerank` returns the same top 5 as
``Runtime(settings).search(site, query, rerank=True, top_n=5)``; the reranker is the tiny test
cross-encoder, so reranking really reorders. The postprocessor is also checked as a drop-in for
LlamaIndex's own ``SentenceTransformerRerank`` on the same model (fp32 backend: same order, same
scores), and the retriever for filters, modes and bad input.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.integrations.llamaindex import RagAppRerank, RagAppRetriever
from rag_app.runtime import Runtime
from tests.conftest import REPO_ROOT, make_test_settings

pytestmark = pytest.mark.timeout(300)

QUERIES = [
    ("builddaily", "How much does Sage Daily cost?"),
    ("builddaily", "How do I configure SSO with Okta?"),
    ("paiddaily", "gap up on earnings then fade"),
    ("sagedaily", "what does the tower card mean"),
]


@pytest.fixture(scope="module")
def settings(sample_index_dir: Path, tiny_path: Path) -> Settings:
    return make_test_settings(sample_index_dir, reranker_model=str(tiny_path))


@pytest.fixture(scope="module")
def runtime(settings: Settings) -> Runtime:
    return Runtime(settings)


def ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


@pytest.mark.parametrize(("site", "query"), QUERIES)
def test_query_engine_returns_the_runtimes_top_5(
    settings: Settings, runtime: Runtime, site: str, query: str
) -> None:
    expected = runtime.search(site, query, rerank=True, top_n=5)
    assert expected["reranked"] is True
    # A separate runtime and a separately loaded reranker: the adapters, not a shared cache, agree.
    rerank = RagAppRerank(model=settings.reranker_model, top_n=5, settings=settings)
    engine = RetrieverQueryEngine.from_args(
        RagAppRetriever(site, settings=settings), llm=MockLLM(), node_postprocessors=[rerank]
    )
    response = engine.query(query)
    assert ids(response.source_nodes) == [p["id"] for p in expected["passages"]]
    assert [n.score for n in response.source_nodes] == pytest.approx(
        [p["relevance"] for p in expected["passages"]]
    )
    assert len(RagAppRetriever(site, runtime=runtime).retrieve(query)) == settings.retrieve_k
    # MockLLM echoes the prompt: the LLM saw each node's text and its title, not its other metadata.
    first = response.source_nodes[0].node
    assert first.get_content(metadata_mode=MetadataMode.NONE) in str(response)
    assert f"title: {first.metadata['title']}" in str(response)
    assert "doc_id:" not in str(response)


def test_reranking_reorders(runtime: Runtime) -> None:
    """The comparison above is not vacuous: the reranked top 5 is not retrieval's first 5."""
    ranks = [
        [p["retrieval_rank"] for p in runtime.search(site, query, rerank=True, top_n=5)["passages"]]
        for site, query in QUERIES
    ]
    assert any(r != [1, 2, 3, 4, 5] for r in ranks), ranks


def test_async_query_gives_the_same_nodes(settings: Settings, runtime: Runtime) -> None:
    site, query = QUERIES[1]
    engine = RetrieverQueryEngine.from_args(
        RagAppRetriever(site, runtime=runtime),
        llm=MockLLM(),
        node_postprocessors=[RagAppRerank(top_n=5, runtime=runtime)],
    )
    sync_ids = ids(engine.query(query).source_nodes)
    assert ids(asyncio.run(engine.aquery(query)).source_nodes) == sync_ids


def test_drop_in_for_sentence_transformer_rerank(sample_index_dir: Path, tiny_path: Path) -> None:
    """Same model, same nodes: the same top 5 in the same order, with the same scores (fp32)."""
    settings = make_test_settings(
        sample_index_dir, reranker_model=str(tiny_path), reranker_backend="torch-fp32"
    )
    theirs = SentenceTransformerRerank(model=str(tiny_path), top_n=5, device="cpu")
    ours = RagAppRerank(model=str(tiny_path), top_n=5, settings=settings)
    assert ours.model == str(tiny_path) and ours.top_n == 5
    retriever = RagAppRetriever("builddaily", settings=settings)
    for _, query in QUERIES[:2]:
        nodes = retriever.retrieve(query)
        expected = theirs.postprocess_nodes([n.model_copy() for n in nodes], query_str=query)
        got = ours.postprocess_nodes(nodes, query_bundle=QueryBundle(query))
        assert ids(got) == ids(expected)
        assert [n.score for n in got] == pytest.approx([float(n.score) for n in expected], abs=1e-4)


def test_postprocessor_on_foreign_nodes(runtime: Runtime) -> None:
    """Nodes from any LlamaIndex source: scored on their EMBED text, duplicates kept apart, ties stable."""
    nodes = [
        NodeWithScore(
            node=TextNode(id_="same", text="Okta SSO is configured under Settings > Security."), score=0.2
        ),
        NodeWithScore(node=TextNode(id_="same", text="The cafeteria opens at nine."), score=0.9),
        NodeWithScore(
            node=TextNode(id_="other", text="Okta SSO is configured under Settings > Security."), score=0.1
        ),
    ]
    rerank = RagAppRerank(top_n=2, runtime=runtime, keep_retrieval_score=True)
    out = rerank.postprocess_nodes(nodes, query_str="How do I configure SSO with Okta?")
    assert len(out) == 2
    texts = [n.node.get_content() for n in out]
    scores = [n.score for n in out]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    if texts[0] == texts[1]:  # the two identical texts tie: the earlier input comes first
        assert [n.node.metadata["retrieval_score"] for n in out] == [0.2, 0.1]
    assert rerank.postprocess_nodes([], query_str="anything") == []
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(nodes)


def test_fallback_keeps_retrieval_order(sample_index_dir: Path) -> None:
    """Without reranker weights (``reranker_on_missing=fallback``) nodes keep their order and scores."""
    settings = make_test_settings(sample_index_dir)  # a reranker path that does not exist, fallback
    rerank = RagAppRerank(top_n=2, settings=settings)
    assert rerank.reranker.available is False
    nodes = [
        NodeWithScore(node=TextNode(text=t), score=s) for t, s in [("a b", 0.5), ("c d", 0.4), ("e", 0.3)]
    ]
    out = rerank.postprocess_nodes(nodes, query_str="c d")
    assert ids(out) == ids(nodes[:2]) and [n.score for n in out] == [0.5, 0.4]


def test_retriever_filters_modes_and_nodes(runtime: Runtime) -> None:
    retriever = RagAppRetriever(
        "paiddaily", runtime=runtime, collection="catalysts", k=5, mode="fts", filters={"tickers": ["NVDA"]}
    )
    nodes = retriever.retrieve("gap up")
    assert 0 < len(nodes) <= 5
    for n in nodes:
        meta = n.node.metadata
        assert meta["site"] == "paiddaily" and meta["collection"] == "catalysts"
        assert "NVDA" in meta["tickers"]
        assert n.node.ref_doc_id == meta["doc_id"]
        assert n.node.get_content(metadata_mode=MetadataMode.EMBED) == n.node.get_content(MetadataMode.NONE)
    expected = runtime.retriever("paiddaily", "catalysts")(
        query="gap up", k=5, mode="fts", filters={"tickers": ["NVDA"]}
    )
    assert ids(nodes) == [p.id for p in expected.passages]
    assert [n.score for n in nodes] == [p.score for p in expected.passages]


def test_retriever_bad_input_is_a_clear_error(runtime: Runtime) -> None:
    with pytest.raises(InputError, match="unknown site 'nosuchsite'"):
        RagAppRetriever("nosuchsite", runtime=runtime)
    with pytest.raises(InputError, match="k must be between 1 and 1000"):
        RagAppRetriever("builddaily", runtime=runtime, k=0).retrieve("anything")
    with pytest.raises(InputError, match="invalid filters"):
        RagAppRetriever("builddaily", runtime=runtime, filters={"date_from": "yesterday"}).retrieve("x")


def test_missing_llama_index_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['llama_index'] = None\n"
        "sys.modules['llama_index.core'] = None\n"
        "import rag_app.integrations\n"  # the package itself imports nothing
        "try:\n"
        "    from rag_app.integrations import RagAppRerank\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    assert "pip install 'rag-app[llamaindex]'" in done.stdout
