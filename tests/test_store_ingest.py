"""Ingest into real LanceDB: idempotence, updates, pruning, crash consistency, mismatches, filters.

Every test runs twice: on local disk and on an s3:// database on the loopback moto server
(``settings`` here is conftest's ``store_settings``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_app.core.errors import EmbedderMismatchError, InputError, LoaderError
from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_documents, ingest_paths
from rag_app.models.embeddings import Embedder, OllamaEmbedder
from rag_app.retrieval.retriever import LanceDBRetriever
from rag_app.store.vector_store import VectorStore, read_columns
from tests.ollama_standin import OllamaStandIn

CATALYSTS = [
    {
        "id": "c1",
        "title": "NVDA beat",
        "text": "Nvidia beat estimates and gapped up, then faded for a week.",
        "date": "2024-02-21",
        "tickers": ["NVDA"],
        "tags": ["earnings"],
    },
    {
        "id": "c2",
        "title": "AMD guide",
        "text": "AMD raised data-center guidance; the stock drifted higher.",
        "date": "2024-05-01",
        "tickers": ["AMD"],
        "tags": ["guidance"],
    },
    {
        "id": "c3",
        "title": "LLY approval",
        "text": "Eli Lilly won FDA approval and broke out on volume.",
        "date": "2024-09-10",
        "tickers": ["LLY"],
        "tags": ["fda"],
    },
    {
        "id": "c4",
        "title": "NVDA split",
        "text": "Nvidia announced a ten-for-one split; a V-shaped recovery.",
        "date": "2024-06-07",
        "tickers": ["NVDA"],
        "tags": ["corporate"],
    },
]


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    """Each test of this module on local disk, then on S3 (conftest ``store_settings``)."""
    return store_settings


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def doc_ids(settings: Settings) -> set[str]:
    table = VectorStore(settings).open_table("paiddaily", "catalysts")
    return set(read_columns(table, ["doc_id"])["doc_id"].to_pylist())


def test_reingest_adds_nothing_update_replaces_prune_removes(settings: Settings, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    first = ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    assert (first.added, first.updated, first.unchanged, first.removed) == (4, 0, 0, 0)
    store = VectorStore(settings)
    version = store.open_table("paiddaily", "catalysts").version

    again = ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    assert (again.added, again.updated, again.unchanged, again.chunks_written) == (0, 0, 4, 0)
    assert store.open_table("paiddaily", "catalysts").version == version  # no write at all

    changed = [dict(CATALYSTS[0], text="Nvidia missed estimates and sold off hard."), *CATALYSTS[1:3]]
    write_jsonl(src, changed)
    kept = ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    assert (kept.added, kept.updated, kept.unchanged, kept.removed) == (0, 1, 2, 0)
    assert doc_ids(settings) == {"c1", "c2", "c3", "c4"}  # no prune: c4 stays
    texts = read_columns(store.open_table("paiddaily", "catalysts"), ["doc_id", "text"]).to_pylist()
    assert [t["text"] for t in texts if t["doc_id"] == "c1"] == ["Nvidia missed estimates and sold off hard."]

    pruned = ingest_paths(settings, "paiddaily", "catalysts", [src], prune=True, progress=False)
    assert pruned.removed == 1 and doc_ids(settings) == {"c1", "c2", "c3"}


def test_crash_mid_ingest_leaves_whole_documents_and_resumes(settings: Settings, minilm: Embedder) -> None:
    docs = _docs(CATALYSTS)

    def crash_after_first_batch(batch_no: int) -> None:
        if batch_no == 1:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        ingest_documents(
            settings,
            "paiddaily",
            "catalysts",
            docs,
            batch_docs=2,
            progress=False,
            on_batch=crash_after_first_batch,
        )
    table = VectorStore(settings).open_table("paiddaily", "catalysts")
    assert table.count_rows() == 2 and doc_ids(settings) == {"c1", "c2"}  # readable, whole docs only
    hits = LanceDBRetriever(settings, "paiddaily", ["catalysts"])(query="Nvidia earnings").passages
    assert {p.doc_id for p in hits} <= {"c1", "c2"}
    resumed = ingest_documents(settings, "paiddaily", "catalysts", docs, progress=False)
    assert (resumed.added, resumed.unchanged) == (2, 2)


def _docs(rows: list[dict]):
    from rag_app.ingest.loaders.tabular import record_to_document

    return [record_to_document(r, path=Path("mem"), line=i) for i, r in enumerate(rows, 1)]


def test_malformed_input_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    version = VectorStore(settings).open_table("paiddaily", "catalysts").version
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "c9", "text": "new"}) + "\n{oops\n")
    with pytest.raises(LoaderError, match=r"bad\.jsonl:2"):
        ingest_paths(settings, "paiddaily", "catalysts", [src, bad], progress=False)
    assert VectorStore(settings).open_table("paiddaily", "catalysts").version == version
    assert doc_ids(settings) == {"c1", "c2", "c3", "c4"}


def test_unknown_site_or_collection(settings: Settings, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    with pytest.raises(InputError, match="unknown site 'nope'"):
        ingest_paths(settings, "nope", "catalysts", [src], progress=False)
    with pytest.raises(InputError, match="unknown collection 'news' for site 'paiddaily'"):
        ingest_paths(settings, "paiddaily", "news", [src], progress=False)


def test_other_embedder_is_refused_for_ingest_and_query(settings: Settings, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    with OllamaStandIn() as srv:  # a stand-in Ollama server: a different (768-d) vector space
        other = OllamaEmbedder("nomic-embed-text", host=srv.host)
        with pytest.raises(EmbedderMismatchError, match=r"bundled:all-MiniLM-L6-v2.*ollama:nomic-embed-text"):
            ingest_documents(
                settings, "paiddaily", "catalysts", _docs(CATALYSTS[:1]), embedder=other, progress=False
            )
        retriever = LanceDBRetriever(settings, "paiddaily", ["catalysts"], embedder=other)
        with pytest.raises(EmbedderMismatchError):
            retriever(query="Nvidia", mode="vector")
        assert retriever(query="Nvidia", mode="fts").passages  # full-text needs no embedder
    assert doc_ids(settings) == {"c1", "c2", "c3", "c4"}


def test_filters_apply_in_every_mode(settings: Settings, tmp_path: Path) -> None:
    ingest_paths(
        settings, "paiddaily", "catalysts", [write_jsonl(tmp_path / "c.jsonl", CATALYSTS)], progress=False
    )
    retriever = LanceDBRetriever(settings, "paiddaily", ["catalysts"])
    for mode in ("vector", "fts", "hybrid"):
        nvda = retriever(query="Nvidia stock gapped", mode=mode, filters={"tickers": ["nvda"]}).passages
        assert nvda and {p.doc_id for p in nvda} <= {"c1", "c4"}, mode
        h1 = retriever(
            query="stock", mode=mode, filters={"date_from": "2024-01-01", "date_to": "2024-06-30"}
        ).passages
        assert {p.doc_id for p in h1} <= {"c1", "c2", "c4"}, mode
        fda = retriever(query="approval", mode=mode, filters={"tags": ["FDA"]}).passages
        assert [p.doc_id for p in fda] == ["c3"], mode
    with pytest.raises(InputError, match="after date_to"):
        retriever(query="x", filters={"date_from": "2024-06-30", "date_to": "2024-01-01"})
    with pytest.raises(InputError, match="invalid filters"):
        retriever(query="x", filters={"sector": "Tech"})


def test_ann_index_is_built_past_the_threshold(settings: Settings, minilm: Embedder) -> None:
    settings = settings.model_copy(update={"ann_threshold_rows": 300})
    rows = [
        {"id": f"d{i}", "text": f"Document {i} about topic {i % 17} and item {i % 5}."} for i in range(320)
    ]
    report = ingest_documents(settings, "sagedaily", "canon", _docs(rows), progress=False)
    assert "vector_idx" in report.indexes
    info = VectorStore(settings).info("sagedaily", "canon")
    assert any("IvfHnswSq" in i for i in info.indices)
    hits = LanceDBRetriever(settings, "sagedaily")(query="Document 7 about topic 7", mode="vector", k=5)
    assert len(hits.passages) == 5
