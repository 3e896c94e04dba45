"""Document-aware retrieval: the per-collection document table, document-level fusion, the per-doc cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_app.core.settings import Settings
from rag_app.core.types import Document, Passage
from rag_app.ingest.pipeline import ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.retrieval.doc_aware import chunk_doc_ranking, fuse_doc_rankings, order_by_documents
from rag_app.retrieval.retriever import LanceDBRetriever
from rag_app.store.doc_index import doc_table_name, search_doc_tables
from rag_app.store.vector_store import VectorStore, read_columns

# A long "book" whose many chunks each mention swords, and one short card page that matches the query
# as a whole but shares only one word with each of the book's chunks.
BOOK = " ".join(
    f"Chapter {i}. The swordsman drew his sword at dawn; swords clashed in the courtyard and a sword "
    f"fell on stone number {i}. The knights polished their swords again before the evening meal."
    for i in range(60)
)
JUSTICE = (
    "Justice. A figure seated between two pillars holds a pair of scales in the left hand and an "
    "upright sword in the right: fairness, balance, truth, law and the weighing of cause and effect."
)
DOCS = [
    Document(id="book", title="Tales of the Blade", text=BOOK),
    Document(id="justice", title="Justice", text=JUSTICE),
    Document(id="tower", title="The Tower", text="A tower struck by lightning, figures falling: upheaval."),
    Document(id="star", title="The Star", text="A woman pours water from two jugs under a bright star."),
]
QUERY = "a figure holding scales and an upright sword, weighing fairness"


def passage(pid: str, doc_id: str, rank: int) -> Passage:
    return Passage(id=pid, doc_id=doc_id, text=pid, score=1.0 / rank, retrieval_rank=rank)


def test_fuse_doc_rankings_is_reciprocal_rank_fusion() -> None:
    scores = fuse_doc_rankings([["a", "b"], ["b", "c"]], rrf_k=60)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61) and scores["c"] == pytest.approx(1 / 62)
    assert max(scores, key=scores.get) == "b"


def test_cap_keeps_chunk_order_and_drops_past_the_cap() -> None:
    pool = [passage(f"a{i}", "a", i) for i in range(1, 4)] + [passage("b1", "b", 4), passage("a9", "a", 5)]
    capped = order_by_documents(pool, None, k=3, max_per_doc=2)
    assert [p.id for p in capped] == ["a1", "a2", "b1"]
    assert [p.retrieval_rank for p in capped] == [1, 2, 3]
    assert [p.id for p in order_by_documents(pool, None, k=10, max_per_doc=0)] == [p.id for p in pool]


def test_document_order_groups_chunks_by_fused_document_score() -> None:
    pool = [passage("a1", "a", 1), passage("b1", "b", 2), passage("a2", "a", 3), passage("c1", "c", 4)]
    assert chunk_doc_ranking(pool) == ["a", "b", "c"]
    ordered = order_by_documents(pool, {"c": 0.3, "a": 0.2, "b": 0.1}, k=4, max_per_doc=1)
    assert [p.id for p in ordered] == ["c1", "a1", "b1"]
    assert ordered[0].score == 0.3 and ordered[0].retrieval_rank == 1


@pytest.fixture
def indexed(tmp_path: Path, minilm: Embedder) -> Settings:
    settings = Settings(data_dir=tmp_path / "rag", lm_model=None, chunk_tokens=48, chunk_overlap=8)
    report = ingest_documents(settings, "sagedaily", "canon", DOCS, progress=False, embedder=minilm)
    assert report.added == 4
    return settings


def test_ingest_keeps_one_document_row_per_document(indexed: Settings, minilm: Embedder) -> None:
    store = VectorStore(indexed)
    docs = store.db.open_table(doc_table_name("sagedaily__canon"))
    rows = {r["doc_id"]: r for r in read_columns(docs, ["doc_id", "n_chunks", "doc_text"]).to_pylist()}
    chunks = store.open_table("sagedaily", "canon")
    per_doc = read_columns(chunks, ["doc_id"])["doc_id"].to_pylist()
    assert set(rows) == {"book", "justice", "tower", "star"}
    assert rows["book"]["n_chunks"] == per_doc.count("book") > 10
    assert "upright sword" in rows["justice"]["doc_text"]

    # A changed document is rewritten, a pruned one removed.
    changed = [d for d in DOCS if d.id != "star"]
    changed[2] = changed[2].model_copy(update={"text": "A tall tower of ivory beside a calm lake."})
    report = ingest_documents(
        indexed, "sagedaily", "canon", changed, prune=True, force=True, progress=False, embedder=minilm
    )
    assert report.updated == 1 and report.removed == 1
    docs = store.db.open_table(doc_table_name("sagedaily__canon"))  # a handle reads its own version
    rows = {r["doc_id"]: r for r in read_columns(docs, ["doc_id", "doc_text"]).to_pylist()}
    assert set(rows) == {"book", "justice", "tower"} and "ivory" in rows["tower"]["doc_text"]


def test_document_signals_lift_the_whole_document_match(indexed: Settings, minilm: Embedder) -> None:
    plain = LanceDBRetriever(indexed, "sagedaily", embedder=minilm, use_saved_config=False)
    chunk_only = plain(query=QUERY, k=5, mode="fts").passages
    assert [p.doc_id for p in chunk_only].count("book") >= 3  # the book crowds the top 5

    aware = LanceDBRetriever(
        indexed.model_copy(update={"doc_signals": True, "max_chunks_per_doc": 1}),
        "sagedaily",
        embedder=minilm,
        use_saved_config=False,
    )
    for mode in ("fts", "hybrid", "vector"):
        top = aware(query=QUERY, k=5, mode=mode).passages
        assert top[0].doc_id == "justice", (mode, [p.doc_id for p in top])
        assert len({p.doc_id for p in top}) == len(top)  # the cap: one chunk per document


def test_document_lists_are_ignored_for_another_embedder(indexed: Settings, minilm: Embedder) -> None:
    store = VectorStore(indexed)
    vector = minilm.embed_query(QUERY)
    names = ["sagedaily__canon"]
    found = search_doc_tables(
        store.db, names, query_vector=vector, model_id=minilm.model_id, query_text=QUERY, depth=5
    )
    assert found is not None and found[0] and found[1]
    assert (
        search_doc_tables(store.db, names, query_vector=vector, model_id="other", query_text=QUERY, depth=5)
        is None
    )
    assert (
        search_doc_tables(
            store.db, ["nosuch__table"], query_vector=None, model_id=None, query_text=QUERY, depth=5
        )
        is None
    )


def test_filters_restrict_document_fusion_to_the_filtered_pool(indexed: Settings, minilm: Embedder) -> None:
    aware = LanceDBRetriever(
        indexed.model_copy(update={"doc_signals": True}), "sagedaily", embedder=minilm, use_saved_config=False
    )
    top = aware(query=QUERY, k=5, filters={"doc_ids": ["book", "tower"]}).passages
    assert top and {p.doc_id for p in top} <= {"book", "tower"}


def test_title_boost_weights_a_header_match(tmp_path: Path, minilm: Embedder) -> None:
    """A title match outranks the same words buried in a longer body once the header is weighted."""
    docs = [
        Document(id="buried", title="Notes", text="Many notes. " * 30 + "The wheel of fortune turns."),
        Document(
            id="titled",
            title="Wheel of Fortune",
            text="A great wheel turns in the sky, four figures at its corners.",
        ),
    ]
    settings = Settings(data_dir=tmp_path / "rag", lm_model=None)
    ingest_documents(settings, "sagedaily", "canon", docs, progress=False, embedder=minilm)
    table = VectorStore(settings).open_table("sagedaily", "canon")
    assert {"header_idx", "search_text_idx"} <= {i.name for i in table.list_indices()}
    boosted = settings.model_copy(update={"fts_title_boost": 5.0})
    top = LanceDBRetriever(boosted, "sagedaily", embedder=minilm, use_saved_config=False)(
        query="wheel of fortune", k=2, mode="fts"
    ).passages
    assert top[0].doc_id == "titled" and top[0].score > top[1].score
