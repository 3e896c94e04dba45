"""`rag-app maintain` on real LanceDB (local disk and the loopback moto S3 server): compaction, index
folding, version retention, and running beside searches and an ingest."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.errors import InputError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.pipeline import ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.retrieval.retriever import LanceDBRetriever
from rag_app.store.maintenance import maintain, maintenance_targets
from rag_app.store.upkeep import superseded_versions
from rag_app.store.vector_store import VectorStore, read_columns
from tests.conftest import store_env

runner = CliRunner()
SITE, COLLECTION = "sagedaily", "canon"
TARGET = [(SITE, COLLECTION)]
QUERIES = ["river crossing at dawn", "a tower struck by lightning", "card 5"]


def _docs(n: int, start: int = 0, version: int = 0) -> list[Document]:
    return [
        Document(
            id=f"d{i}",
            title=f"Card {i}",
            text=f"Card {i} shows a river crossing at dawn, topic {i % 3}. "
            f"A tower struck by lightning stands on hill {i}. Revision {version}.",
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def fragmented(store_settings: Settings, minilm: Embedder) -> VectorStore:
    """A table of many small fragments with rows its indexes do not cover yet: 8 documents committed
    one by one, then 3 appends that no ingest tidied (as a writer killed before its index refresh)."""
    ingest_documents(
        store_settings, SITE, COLLECTION, _docs(8), batch_docs=1, embedder=minilm, progress=False
    )
    store = VectorStore(store_settings)
    table = store.open_table(SITE, COLLECTION)
    rows = table.to_arrow().slice(0, 1)
    for j in range(3):
        clone = rows.set_column(0, "id", pa.array([f"x{j}#0"])).set_column(1, "doc_id", pa.array([f"x{j}"]))
        table.add(clone)
    return store


def _results(settings: Settings, minilm: Embedder) -> dict[tuple[str, str], list[str] | set[str]]:
    """Search results per (mode, query): the exact vector ranking, and the set of full-text and hybrid
    matches (BM25 statistics may reorder ties once new rows are folded into the index)."""
    retriever = LanceDBRetriever(settings, SITE, embedder=minilm, use_saved_config=False)
    out: dict[tuple[str, str], list[str] | set[str]] = {}
    for query in QUERIES:
        out[("vector", query)] = [p.id for p in retriever(query=query, mode="vector", k=20).passages]
        for mode in ("fts", "hybrid"):
            out[(mode, query)] = {p.id for p in retriever(query=query, mode=mode, k=50).passages}
    return out


def test_maintain_compacts_folds_and_keeps_every_row_and_result(
    fragmented: VectorStore, minilm: Embedder
) -> None:
    settings = fragmented.settings
    table = fragmented.open_table(SITE, COLLECTION)
    ids_before = sorted(read_columns(table, ["id"])["id"].to_pylist())
    results_before = _results(settings, minilm)

    done = {t.table: t for t in maintain(fragmented, TARGET, retention_s=3600)}
    chunks = done["sagedaily__canon"]
    assert "sagedaily__canon__docs" in done  # the document table is maintained with it
    assert chunks.fragments_before >= 11 and chunks.fragments_after < chunks.fragments_before
    assert chunks.indexes_folded == ["header_idx", "search_text_idx"]  # the 3 appended rows
    table = fragmented.open_table(SITE, COLLECTION)  # a new hand-out: the maintained version
    assert all((s := table.index_stats(i)) and s.num_unindexed_rows == 0 for i in chunks.indexes_folded)
    assert chunks.versions_removed == 0  # everything is younger than an hour
    assert chunks.rows == len(ids_before) == 11
    assert sorted(read_columns(table, ["id"])["id"].to_pylist()) == ids_before
    assert _results(settings, minilm) == results_before

    again = {t.table: t for t in maintain(fragmented, TARGET, retention_s=3600)}["sagedaily__canon"]
    assert again.indexes_folded == [] and again.fragments_after == chunks.fragments_after


def test_versions_past_retention_are_removed_and_the_latest_kept(
    fragmented: VectorStore, minilm: Embedder
) -> None:
    table = fragmented.open_table(SITE, COLLECTION)
    ids = sorted(read_columns(table, ["id"])["id"].to_pylist())
    versions_before = len(table.list_versions())
    assert versions_before > 10

    done = {t.table: t for t in maintain(fragmented, TARGET, retention_s=0)}["sagedaily__canon"]
    # every version but the one current when maintain started; maintain's own commits come after it
    assert done.versions_removed == versions_before - 1
    assert min(v["version"] for v in table.list_versions()) == versions_before
    assert sorted(read_columns(table, ["id"])["id"].to_pylist()) == ids
    assert LanceDBRetriever(fragmented.settings, SITE, embedder=minilm)(query="river", k=3).passages


def test_a_version_goes_when_superseded_past_retention_not_when_created() -> None:
    """Version 1 was created long ago but was the latest until a minute ago: a reader may be on it."""
    at = dt.datetime(2026, 1, 1, 12, 0, 0)
    versions = [
        {"version": 1, "timestamp": at},
        {"version": 2, "timestamp": at + dt.timedelta(days=30)},
        {"version": 3, "timestamp": at + dt.timedelta(days=30, seconds=10)},
    ]
    now = (at + dt.timedelta(days=30, seconds=60)).timestamp()
    assert superseded_versions(versions, now - 3600) == []
    assert superseded_versions(versions, now - 55) == [1]  # version 1 superseded 60 s ago
    assert superseded_versions(versions, now) == [1, 2]  # the latest is never removed
    assert superseded_versions(versions[:1], now) == []


def test_retention_below_read_consistency_and_bad_targets_are_refused(store_settings: Settings) -> None:
    lagging = VectorStore(store_settings.model_copy(update={"read_consistency_s": 5.0}))
    with pytest.raises(InputError, match=r"retention 1s is shorter than RAG_READ_CONSISTENCY_S \(5s\)"):
        maintain(lagging, TARGET, retention_s=1)
    with pytest.raises(InputError, match="--collection needs --site"):
        maintenance_targets(store_settings, None, "canon")
    assert maintenance_targets(store_settings, "paiddaily", None) == [
        ("paiddaily", "tickers"),
        ("paiddaily", "catalysts"),
    ]


def test_maintain_beside_searches_and_an_ingest(store_settings: Settings, minilm: Embedder) -> None:
    """Searches (threads) and an ingest (a thread) while maintain compacts: no errors, and the final table
    holds exactly the ingested documents at their last revision."""
    ingest_documents(
        store_settings, SITE, COLLECTION, _docs(4), batch_docs=1, embedder=minilm, progress=False
    )
    store = VectorStore(store_settings)  # one store shared by every thread, as a server worker does
    errors: list[BaseException] = []
    ingested = threading.Event()

    def search() -> None:
        retriever = LanceDBRetriever(store_settings, SITE, store=store, embedder=minilm)
        try:
            while not ingested.is_set():
                for mode in ("vector", "fts", "hybrid"):
                    assert retriever(query="river crossing", mode=mode, k=5).passages
                ingested.wait(0.05)  # leave the writers some CPU
        except BaseException as exc:
            errors.append(exc)

    def ingest() -> None:
        try:
            ingest_documents(
                store_settings,
                SITE,
                COLLECTION,
                _docs(5, version=1),
                batch_docs=2,
                embedder=minilm,
                progress=False,
            )
        except BaseException as exc:
            errors.append(exc)
        finally:
            ingested.set()

    threads = [threading.Thread(target=search) for _ in range(2)] + [threading.Thread(target=ingest)]
    for thread in threads:
        thread.start()
    runs = []
    while not ingested.is_set() or not runs:
        runs.append(maintain(store, TARGET, retention_s=60))
        ingested.wait(0.2)  # a scheduled maintain, not a loop that keeps the writer lock to itself
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    runs.append(maintain(store, TARGET, retention_s=60))
    rows = read_columns(store.open_table(SITE, COLLECTION), ["doc_id", "text"]).to_pylist()
    assert sorted({r["doc_id"] for r in rows}) == [f"d{i}" for i in range(5)]
    assert all("Revision 1." in r["text"] for r in rows)
    assert store.duplicate_ids(store.open_table(SITE, COLLECTION)) == {}
    assert runs[-1][0].indexes_folded == []  # the ingest's rows were folded by it or by maintain


def test_cli_maintain_reports_each_table(
    fragmented: VectorStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in store_env(fragmented.settings).items():
        monkeypatch.setenv(key, value)
    args = ["--data-dir", str(fragmented.settings.data_dir)]
    out = runner.invoke(app, ["maintain", "--site", SITE, "--collection", COLLECTION, "--json", *args])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["retention_s"] == fragmented.settings.maintain_retention_s
    tables = {t["table"]: t for t in report["tables"]}
    assert set(tables) == {"sagedaily__canon", "sagedaily__canon__docs"}
    chunks = tables["sagedaily__canon"]
    assert chunks["fragments_after"] < chunks["fragments_before"] and chunks["rows"] == 11
    assert set(chunks["indexes_folded"]) == {"header_idx", "search_text_idx"}

    text = runner.invoke(app, ["maintain", "--retention-s", "0", *args])  # every site and collection
    assert text.exit_code == 0, text.output
    assert "sagedaily__canon: 11 rows, fragments" in text.output and "versions removed" in text.output
    refused = runner.invoke(app, ["maintain", "--retention-s", "-1", *args])
    assert refused.exit_code == 2 and "retention must be 0 or more" in refused.output
