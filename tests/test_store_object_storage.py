"""The store on object storage (an s3:// database on the loopback moto server): replicas' read
consistency, whole documents only, concurrent commits, and storage options that never show."""

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
from rag_app.store.vector_store import VectorStore
from tests.conftest import S3_SECRET, S3Server, store_env, store_settings_for

runner = CliRunner()
SITE, COLLECTION = "sagedaily", "canon"


@pytest.fixture
def s3_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return store_settings_for("s3", tmp_path / "rag", request, chunk_tokens=24, chunk_overlap=0)


def _doc(doc_id: str, revision: int, sentences: int = 2) -> Document:
    """A document whose every chunk names its revision (``rev<n>``), so a reader can tell versions apart."""
    text = " ".join(
        f"Sentence {i} of rev{revision} tells of the river and the tower." for i in range(sentences)
    )
    return Document(id=doc_id, title=f"Doc {doc_id}", text=text)


def _count(store: VectorStore) -> int:
    table = store.open_table(SITE, COLLECTION)
    return 0 if table is None else table.count_rows()


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
