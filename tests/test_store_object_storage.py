"""The store on object storage (an s3:// database on the loopback moto server): replicas' read
consistency, whole documents only (also within one query while other threads' hand-outs see new
versions), writers on the latest version, concurrent commits, and storage options that never show."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.pipeline import ingest_documents
from rag_app.models.embeddings import Embedder
from rag_app.retrieval.retriever import LanceDBRetriever
from rag_app.store.connection import StoreUnavailableError, display_location, redact
from rag_app.store.schema import table_name
from rag_app.store.search import search_tables
from rag_app.store.vector_store import VectorStore, read_columns
from tests.conftest import S3_SECRET, S3Server, store_env, store_settings_for

runner = CliRunner()
SITE, COLLECTION = "sagedaily", "canon"


@pytest.fixture
def s3_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return store_settings_for("s3", tmp_path / "rag", request, chunk_tokens=24, chunk_overlap=0)


@pytest.fixture
def both_settings(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """:func:`s3_settings` on local disk, then on the moto S3 server."""
    return store_settings_for(store_kind, tmp_path / "rag", request, chunk_tokens=24, chunk_overlap=0)


def _doc(doc_id: str, revision: int, sentences: int = 2) -> Document:
    """A document whose every chunk names its revision (``rev<n>``), so a reader can tell versions apart."""
    text = " ".join(
        f"Sentence {i} of rev{revision} tells of the river and the tower." for i in range(sentences)
    )
    return Document(id=doc_id, title=f"Doc {doc_id}", text=text)


def _count(store: VectorStore) -> int:
    table = store.open_table(SITE, COLLECTION)
    return 0 if table is None else table.count_rows()


def _revisions(texts: list[str]) -> set[str]:
    return {word for text in texts for word in text.split() if word.startswith("rev")}


def _all_rows(store: VectorStore) -> pa.Table:
    """Every row of the collection, vectors included, as stored now."""
    table = store.open_table(SITE, COLLECTION)
    return read_columns(table, table.schema.names)


def test_a_replica_sees_a_commit_at_once_or_within_its_interval(
    s3_settings: Settings, minilm: Embedder
) -> None:
    ingest_documents(s3_settings, SITE, COLLECTION, [_doc("a", 0)], embedder=minilm, progress=False)
    writer = VectorStore(s3_settings)
    eager = VectorStore(s3_settings)  # read_consistency_s = 0: checks before every read
    interval = 3.0
    lagging = VectorStore(s3_settings.model_copy(update={"read_consistency_s": interval}))
    start = _count(eager)
    assert _count(lagging) == start > 0  # the lagging replica has read (and holds) this version
    loaded = time.monotonic()

    writer.delete_documents(writer.open_table(SITE, COLLECTION), ["a"])  # one commit
    assert _count(eager) == 0  # at once
    stale = _count(lagging)
    if time.monotonic() - loaded < interval:  # (on a stalled machine the interval may have passed)
        assert stale == start  # still on the version it read, as its interval allows
    deadline = time.monotonic() + 30 * interval
    while _count(lagging) != 0:
        assert time.monotonic() < deadline, "the lagging replica never saw the commit"
        time.sleep(0.2)


def test_a_reader_never_sees_half_of_a_document(s3_settings: Settings, minilm: Embedder) -> None:
    """A writer replaces a many-chunk document revision after revision while another store reads it:
    every read sees all chunks of one revision."""
    ingest_documents(s3_settings, SITE, COLLECTION, [_doc("book", 0, 10)], embedder=minilm, progress=False)
    reader = VectorStore(s3_settings)
    chunks = len(reader.chunk_texts(SITE, COLLECTION, ["book"]))
    assert chunks >= 4
    seen: list[set[str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        retriever = LanceDBRetriever(s3_settings, SITE, store=reader, embedder=minilm)
        try:
            while not done.is_set():
                rows = reader.chunk_texts(SITE, COLLECTION, ["book"])
                revisions = {word for r in rows for word in r["text"].split() if word.startswith("rev")}
                assert len(rows) == chunks and len(revisions) == 1, (len(rows), revisions)
                seen.append(revisions)
                hits = retriever(query="river tower", mode="fts", k=50, filters={"doc_ids": ["book"]})
                assert len({w for p in hits.passages for w in p.text.split() if w.startswith("rev")}) == 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for revision in range(1, 4):
            ingest_documents(
                s3_settings, SITE, COLLECTION, [_doc("book", revision, 10)], embedder=minilm, progress=False
            )
    finally:
        done.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert len(set().union(*seen)) >= 2  # it read while the document changed under it
    assert all("rev3" in r["text"] for r in reader.chunk_texts(SITE, COLLECTION, ["book"]))


def test_a_handle_handed_out_stays_on_its_version(both_settings: Settings, minilm: Embedder) -> None:
    """Another hand-out after a commit gives the new version and leaves the handle a query already
    holds where it was: that query's later reads (here a whole hybrid search) still see one version."""
    ingest_documents(both_settings, SITE, COLLECTION, [_doc("a", 0, 6)], embedder=minilm, progress=False)
    reader = VectorStore(both_settings)  # read_consistency_s = 0: every hand-out checks
    held = reader.open_table(SITE, COLLECTION)
    version, rows = held.version, held.count_rows()
    ingest_documents(both_settings, SITE, COLLECTION, [_doc("a", 1, 2)], embedder=minilm, progress=False)

    latest = reader.open_table(SITE, COLLECTION)  # another thread's hand-out, say
    assert latest.version > version and latest.count_rows() < rows
    assert held.version == version and held.count_rows() == rows
    vector = minilm.embed_query("river tower")
    hits = search_tables(
        [(table_name(SITE, COLLECTION), held)],
        mode="hybrid",
        k=50,
        query_text="river tower",
        query_vector=vector,
        model_id=minilm.model_id,
        filters=None,
        ann_ef=both_settings.ann_ef,
        rrf_k=both_settings.rrf_k,
    )
    assert len(hits) == rows and _revisions([h.text for h in hits]) == {"rev0"}
    assert reader.open_table(SITE, COLLECTION) is latest  # nothing new: the same handle again


def test_a_hybrid_query_reads_one_version_while_other_threads_see_new_ones(
    both_settings: Settings, minilm: Embedder
) -> None:
    """One thread runs hybrid queries on a store in a loop while another replaces the documents, commit
    after commit, and takes a hand-out of the same store after each (read_consistency_s = 0): each
    query's vector and full-text reads see one version, so every document it returns is wholly of one
    revision. (When a hand-out moved the one shared handle in place, a query between its vector and
    its full-text read merged chunks of two revisions.)"""
    ids = ["a", "b", "c"]
    ingest_documents(
        both_settings, SITE, COLLECTION, [_doc(i, 0, 6) for i in ids], embedder=minilm, progress=False
    )
    writer = VectorStore(both_settings)  # a writer of its own, as the server's ingest jobs have
    revisions = [_all_rows(writer)]
    ingest_documents(
        both_settings, SITE, COLLECTION, [_doc(i, 1, 6) for i in ids], embedder=minilm, progress=False
    )
    revisions.append(_all_rows(writer))
    reader = VectorStore(both_settings)
    vector = minilm.embed_query("river tower")
    seen: list[set[str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                hits = reader.search(
                    SITE,
                    [COLLECTION],
                    mode="hybrid",
                    k=50,
                    query_text="river tower",
                    query_vector=vector,
                    model_id=minilm.model_id,
                )
                by_doc: dict[str, set[str]] = {}
                for hit in hits:
                    by_doc.setdefault(hit.doc_id, set()).update(_revisions([hit.text]))
                assert set(by_doc) == set(ids), by_doc
                assert all(len(revs) == 1 for revs in by_doc.values()), by_doc
                seen.append(set().union(*by_doc.values()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=search)
    thread.start()
    try:
        for commit in range(16):
            with writer.writer(SITE, COLLECTION):
                writer.replace_documents(writer.open_table(SITE, COLLECTION), revisions[commit % 2], ids)
            for _ in range(3):
                reader.open_table(SITE, COLLECTION)
            queries = len(seen)
            deadline = time.monotonic() + 30
            while len(seen) == queries and not errors and time.monotonic() < deadline:
                time.sleep(0.005)  # at least one query on each commit
            if errors:
                break
    finally:
        done.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert {"rev0", "rev1"} <= set().union(*seen)  # it read while the documents changed under it


def test_a_writer_diffs_against_the_latest_version_and_moves_no_reader_handle(
    both_settings: Settings, minilm: Embedder
) -> None:
    """Inside ``writer()`` a store with a long read-consistency interval still reads the latest commit,
    and its commits leave the handle its readers hold alone; after it, this store reads its write."""
    ingest_documents(
        both_settings, SITE, COLLECTION, [_doc("a", 0), _doc("b", 0)], embedder=minilm, progress=False
    )
    lagging = VectorStore(both_settings.model_copy(update={"read_consistency_s": 3600.0}))
    held = lagging.open_table(SITE, COLLECTION)
    version, rows = held.version, held.count_rows()
    other = VectorStore(both_settings)
    other.delete_documents(other.open_table(SITE, COLLECTION), ["b"])  # another process's commit
    assert lagging.open_table(SITE, COLLECTION) is held  # within its interval: the version it has

    with lagging.writer(SITE, COLLECTION):
        own = lagging.open_table(SITE, COLLECTION)
        assert own is not held and set(lagging.doc_hashes(own)) == {"a"}  # the latest, not its own view
        lagging.delete_documents(own, ["a"])
        assert own.count_rows() == 0
    assert held.version == version and held.count_rows() == rows  # a reader's handle never moved
    assert _count(lagging) == 0  # its own write, at once despite the interval


def test_two_connections_committing_at_once_keep_every_row(s3_server: S3Server) -> None:
    """Lance commits on S3 with a conditional put: of two racing commits one is refused and retried,
    none is lost (moto answers the losing put with 412, as S3 does)."""
    uri = s3_server.new_db_uri()
    options = s3_server.storage_options()
    lancedb.connect(uri, storage_options=options).create_table("t", pa.table({"id": ["seed"]}))
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def append(tag: str) -> None:
        table = lancedb.connect(uri, storage_options=options).open_table("t")
        barrier.wait()
        try:
            for i in range(8):
                table.add(pa.table({"id": [f"{tag}{i}"]}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    ids = lancedb.connect(uri, storage_options=options).open_table("t").to_arrow()["id"].to_pylist()
    assert sorted(ids) == sorted(["seed"] + [f"{t}{i}" for t in "ab" for i in range(8)])


def test_storage_options_never_show(
    s3_settings: Settings,
    minilm: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    ingest_documents(s3_settings, SITE, COLLECTION, [_doc("a", 0)], embedder=minilm, progress=False)
    store = VectorStore(s3_settings)
    LanceDBRetriever(s3_settings, SITE, store=store, embedder=minilm)(query="river", k=3)
    shown = [repr(s3_settings), repr(store), repr(store.db), str(store.open_table(SITE, COLLECTION))]

    for key, value in store_env(s3_settings).items():
        monkeypatch.setenv(key, value)
    args = ["--data-dir", str(s3_settings.data_dir)]
    for command in (
        ["doctor", "--json"],
        ["stats"],
        ["stats", "--json"],
        ["maintain"],
        ["maintain", "--json"],
    ):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 0, result.output
        shown.append(result.output)
    doctor = {c["component"]: c for c in json.loads(runner.invoke(app, ["doctor", "--json", *args]).stdout)}
    assert doctor["database"]["detail"].startswith(s3_settings.db_uri)
    assert "aws_secret_access_key" in doctor["database"]["detail"]  # the option's name, not its value
    assert doctor["table sagedaily/canon"]["status"] == "ok"

    missing = s3_settings.model_copy(update={"db_uri": "s3://no-such-bucket-rag/db"})
    with pytest.raises(StoreUnavailableError) as failed:
        VectorStore(missing).table_names()
    assert "no-such-bucket-rag" in str(failed.value) and "RAG_STORAGE_OPTIONS" in str(failed.value)
    shown.append(str(failed.value))
    monkeypatch.setenv("RAG_DB_URI", "s3://no-such-bucket-rag/db")
    unreachable = json.loads(runner.invoke(app, ["doctor", "--json", *args]).stdout)
    assert {c["component"]: c["status"] for c in unreachable}["database access"] == "unreachable"
    shown.append(json.dumps(unreachable))

    shown += [record.getMessage() for record in caplog.records]
    leaks = [text for text in shown if S3_SECRET in text]
    assert not leaks, leaks


def test_locations_are_shown_without_credentials() -> None:
    assert display_location("s3://AKIA:secret@bucket/db?sig=abc#x") == "s3://bucket/db"
    assert display_location("az://user@container:8443/path") == "az://container:8443/path"
    assert display_location("/srv/rag/lancedb") == "/srv/rag/lancedb"
    options = {"aws_secret_access_key": "s3cr3t-value", "allow_http": "1"}
    assert redact("denied for s3cr3t-value (allow_http=1)", options) == "denied for *** (allow_http=1)"
