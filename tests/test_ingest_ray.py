"""``ingest --engine ray`` (rag_app.ingest.engines) against the single-process ingest, on real parts.

Ray runs locally on this machine, started once for the module through the engine's own
:func:`ray_session` (the engine then attaches to it and leaves it running); the embedder is the
bundled MiniLM in float32 both on the driver and in the Ray actors; the tables are real LanceDB
tables (on local disk, and on the loopback moto S3 server for the update test). Both engines ingest
the same files into separate data dirs and the tables must agree row by row.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rag_app.core.errors import EmbedderMismatchError, InputError, LoaderError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.engines.ray_ingest import check_cluster_storage, ray_ingest_documents, ray_ingest_paths
from rag_app.ingest.engines.ray_session import RayNotInstalledError, ray_session, require_ray
from rag_app.ingest.engines.ray_stages import DOC_SCHEMA, EmbedActor, document_rows
from rag_app.ingest.pipeline import IngestReport, ingest_documents, ingest_paths
from rag_app.models.embeddings import Embedder, load_embedder
from rag_app.store.vector_store import VectorStore
from tests.conftest import REPO_ROOT, SAMPLE_DATA, store_settings_for

SITE, COLLECTION = "builddaily", "resources"
#: A slice of the builddaily sample (nested folders: ids like "guides/sso") and three ticker pages
#: (JSONL: dates, tickers, tags), small enough to embed twice in seconds.
SLICE = ["about.md", "pricing.md", "faq.md", "guides/sso.md", "guides/webhooks.md", "changelog/sage.md"]
QUERIES = ["single sign-on setup", "how much does it cost", "webhook retries", "NVIDIA options implied move"]
#: Columns that must be equal row by row (``ingested_at`` is the write time; vectors are compared by cosine).
SAME_COLUMNS = [
    "doc_id",
    "doc_hash",
    "site",
    "collection",
    "chunk_index",
    "title",
    "text",
    "search_text",
    "header",
    "source",
    "heading_path",
    "date",
    "tickers",
    "tags",
    "metadata_json",
    "start_char",
    "end_char",
    "page_start",
    "page_end",
]


def offline_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "programs_dir": REPO_ROOT / "programs",
        "lm_model": None,
        "reranker_on_missing": "fallback",
        "embedder_precision": "float32",
    }
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def ray_here(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray for the whole module (its start-up is most of a small Ray ingest's time)."""
    with ray_session(offline_settings(tmp_path_factory.mktemp("ray")), progress=False):
        yield


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """MiniLM in float32: what the Ray actors load from the same settings."""
    return load_embedder(offline_settings(Path("unused")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for name in SLICE:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_DATA / SITE / COLLECTION / name, root / name)
    lines = (SAMPLE_DATA / "paiddaily" / "tickers" / "tickers.jsonl").read_text().splitlines()[:3]
    (root / "tickers.jsonl").write_text("\n".join(lines) + "\n")
    return root


@dataclass
class Built:
    local: Settings
    ray: Settings
    local_report: IngestReport
    ray_report: IngestReport


@pytest.fixture(scope="module")
def built(
    ray_here: None, embedder: Embedder, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    """The corpus ingested by each engine into its own data dir. The Ray run uses two actors, two
    documents per actor batch and a commit every four documents, so it makes several fragments per
    commit and several commits."""
    base = tmp_path_factory.mktemp("engines")
    local = offline_settings(base / "local")
    ray = offline_settings(base / "ray", ray_embed_actors=2, ray_commit_documents=4)
    local_report = ingest_paths(local, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
    ray_report = ray_ingest_paths(
        ray, SITE, COLLECTION, [corpus], progress=False, embedder=embedder, batch_docs=2
    )
    return Built(local, ray, local_report, ray_report)


def rows_by_id(settings: Settings) -> dict[str, dict[str, Any]]:
    table = VectorStore(settings).open_table(SITE, COLLECTION)
    assert table is not None
    rows = table.to_arrow().to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "a chunk id is stored twice"
    return by_id


def assert_same_table(ours: Settings, reference: Settings) -> None:
    """Same ids, same row contents, vectors within cosine 0.999."""
    got, want = rows_by_id(ours), rows_by_id(reference)
    assert sorted(got) == sorted(want)
    for chunk_id, row in want.items():
        assert {c: got[chunk_id][c] for c in SAME_COLUMNS} == {c: row[c] for c in SAME_COLUMNS}, chunk_id
        a, b = np.asarray(got[chunk_id]["vector"]), np.asarray(row["vector"])
        assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.999, chunk_id


def test_ray_table_equals_the_single_process_table(built: Built, embedder: Embedder) -> None:
    lr, rr = built.local_report, built.ray_report
    assert (rr.added, rr.updated, rr.unchanged, rr.empty, rr.files) == (9, 0, 0, 0, 7)
    assert (lr.added, lr.chunks_written, lr.files, lr.indexes) == (
        rr.added,
        rr.chunks_written,
        rr.files,
        rr.indexes,
    )
    assert rr.chunks_written > 9 and "search_text_idx" in rr.indexes
    assert_same_table(built.ray, built.local)

    ray_store, local_store = VectorStore(built.ray), VectorStore(built.local)
    for query in QUERIES:
        vector = embedder.embed_query(query)
        for mode in ("fts", "vector", "hybrid"):
            hits = [
                [
                    p.id
                    for p in store.search(
                        SITE,
                        [COLLECTION],
                        mode=mode,
                        k=5,
                        query_text=query,
                        query_vector=vector,
                        model_id=embedder.model_id,
                    )
                ]
                for store in (ray_store, local_store)
            ]
            assert hits[0] == hits[1], (mode, query)
            assert hits[0], (mode, query)
    # the document table (document-level ranking) follows the chunk table in both
    assert ray_store.table_names() == local_store.table_names()
    ray_table, local_table = ray_store.open_table(SITE, COLLECTION), local_store.open_table(SITE, COLLECTION)
    ray_docs = ray_store.list_documents(ray_table, limit=100)
    local_docs = local_store.list_documents(local_table, limit=100)
    assert [(d.doc_id, d.doc_hash, d.chunks) for d in ray_docs[1]] == [
        (d.doc_id, d.doc_hash, d.chunks) for d in local_docs[1]
    ]


def test_rerun_writes_nothing_with_either_engine(built: Built, corpus: Path, embedder: Embedder) -> None:
    store = VectorStore(built.ray)
    version = store.open_table(SITE, COLLECTION).version
    again = ray_ingest_paths(built.ray, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
    assert (again.added, again.updated, again.unchanged, again.chunks_written) == (0, 0, 9, 0)
    # the engines are interchangeable: the single-process engine finds the Ray-built table current
    local = ingest_paths(built.ray, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
    assert (local.added, local.updated, local.unchanged, local.chunks_written) == (0, 0, 9, 0)
    assert VectorStore(built.ray).open_table(SITE, COLLECTION).version == version


def doc(doc_id: str, text: str, **fields: Any) -> Document:
    return Document(id=doc_id, text=text, title=doc_id.upper(), source=f"test://{doc_id}", **fields)


def test_update_and_prune_on_s3_match_the_single_process_engine(
    ray_here: None, embedder: Embedder, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Documents already loaded (a source's items) through ``ray_ingest_documents``, on an s3://
    database (the actors write their fragments to the bucket with the settings' storage options),
    into a collection the single-process engine wrote: a changed document replaces its chunks, a new
    one is appended, a gone one is pruned; a dry run writes nothing."""
    ray = store_settings_for("s3", tmp_path / "ray", request, embedder_precision="float32")
    first = [
        doc("a", "Alpha covers onboarding. " * 20, tags=["guide"]),
        doc("b", "Bravo explains billing and invoices in detail.", date="2024-05-01"),
        doc("c", "Charlie lists the keyboard shortcuts."),
    ]
    ingest_documents(ray, SITE, COLLECTION, first, progress=False, embedder=embedder)
    second = [
        doc("a", "Alpha covers onboarding and single sign-on. " * 20, tags=["guide"]),
        doc("c", "Charlie lists the keyboard shortcuts."),
        doc("d", "Delta is new: webhooks and retries.", metadata={"product": "forge"}),
        doc("e", "   "),
    ]
    store = VectorStore(ray)
    version = store.open_table(SITE, COLLECTION).version
    dry = ray_ingest_documents(
        ray, SITE, COLLECTION, second, prune=True, force=True, dry_run=True, progress=False, embedder=embedder
    )
    assert (dry.added, dry.updated, dry.unchanged, dry.empty, dry.removed_ids) == (1, 1, 1, 1, ["b"])
    assert store.open_table(SITE, COLLECTION).version == version

    report = ray_ingest_documents(
        ray, SITE, COLLECTION, second, prune=True, force=True, progress=False, embedder=embedder
    )
    assert (report.added, report.updated, report.unchanged, report.removed) == (1, 1, 1, 1)
    local = offline_settings(tmp_path / "local")
    ingest_documents(local, SITE, COLLECTION, second, progress=False, embedder=embedder)
    assert_same_table(ray, local)
    assert store.duplicate_ids(store.open_table(SITE, COLLECTION)) == {}


def test_bad_input_stops_before_anything_is_written(
    ray_here: None, embedder: Embedder, tmp_path: Path
) -> None:
    """The scan runs before any write: a malformed record stops the run (file and line named), or
    under ``on_error="skip"`` is reported; duplicate ids are refused as the local loader refuses them."""
    corpus = tmp_path / "in"
    corpus.mkdir()
    good = {"id": "ok", "title": "OK", "text": "A fine record."}
    (corpus / "records.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    settings = offline_settings(tmp_path / "rag")
    with pytest.raises(LoaderError, match=r"records\.jsonl:2"):
        ray_ingest_paths(settings, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
    assert VectorStore(settings).open_table(SITE, COLLECTION) is None

    skipped = ray_ingest_paths(
        settings, SITE, COLLECTION, [corpus], on_error="skip", dry_run=True, progress=False, embedder=embedder
    )
    assert skipped.added == 1 and len(skipped.skipped) == 1 and "records.jsonl:2" in skipped.skipped[0]

    (corpus / "records.jsonl").write_text(json.dumps(good) + "\n")
    (corpus / "again.jsonl").write_text(json.dumps(good) + "\n")
    with pytest.raises(LoaderError, match="duplicate document id 'ok'"):
        ray_ingest_paths(settings, SITE, COLLECTION, [corpus], progress=False, embedder=embedder)
    assert VectorStore(settings).open_table(SITE, COLLECTION) is None


class RenamedEmbedder:
    """A STAND-IN for a driver embedder other than the one the actors load: MiniLM under another
    model id (as a site's activated fine-tuned embedder would be)."""

    model_id = "example/another-embedder"

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.max_tokens = inner.max_tokens

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed_documents(self, texts: Any) -> Any:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> Any:
        return self.inner.embed_query(text)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_spans(text)


def test_actors_refuse_an_embedder_other_than_the_drivers(
    ray_here: None, embedder: Embedder, tmp_path: Path
) -> None:
    settings = offline_settings(tmp_path / "rag")
    with pytest.raises(EmbedderMismatchError, match="example/another-embedder"):
        ray_ingest_documents(
            settings,
            SITE,
            COLLECTION,
            [doc("a", "Alpha.")],
            progress=False,
            embedder=RenamedEmbedder(embedder),
        )
    table = VectorStore(settings).open_table(SITE, COLLECTION)
    assert table is not None and table.count_rows() == 0  # nothing committed


def test_a_cluster_with_a_local_database_is_refused_before_ray_is_contacted(
    corpus: Path, tmp_path: Path
) -> None:
    """With ``ray_address`` (a cluster) and a database on a local path, actors on other nodes would write
    fragments to their own disks and the commit would name files the table lacks: refused up front. The
    address is a dummy: reaching it would fail with ServiceUnavailableError, and a Ray already running in
    this process would ingest; the InputError and the empty store show neither happened."""
    settings = offline_settings(tmp_path / "rag", ray_address="ray://ray-head.invalid:10001")
    runs = [
        lambda: ray_ingest_paths(settings, SITE, COLLECTION, [corpus], progress=False),
        lambda: ray_ingest_documents(settings, SITE, COLLECTION, [doc("a", "Alpha.")], progress=False),
    ]
    for run in runs:
        with pytest.raises(InputError) as err:
            run()
        message = str(err.value)
        assert (
            "RAG_DB_URI" in message and "object storage" in message and str(settings.db_location) in message
        )
    assert VectorStore(settings).open_table(SITE, COLLECTION) is None
    # Object storage is the same place from every node; without an address Ray runs on this machine.
    check_cluster_storage(settings.model_copy(update={"db_uri": "s3://bucket/rag"}))
    check_cluster_storage(settings.model_copy(update={"ray_address": None}))


def test_an_actor_that_cannot_open_the_table_writes_nothing(embedder: Embedder, tmp_path: Path) -> None:
    """The actor's own check (in process, no Ray needed): a table URI it cannot open (a local path on
    another node) comes back as an error row naming the node and the fix, with no fragment written."""
    settings = offline_settings(tmp_path / "rag")
    elsewhere = tmp_path / "other-node" / "chunks.lance"
    actor = EmbedActor(
        settings,
        site=SITE,
        collection=COLLECTION,
        identity=(embedder.model_id, embedder.dimension, embedder.max_tokens),
        fingerprint="unused",
        table_uri=str(elsewhere),
        schema=pa.schema([("id", pa.string())]),
    )
    batch = pa.Table.from_pylist(document_rows([(doc("a", "Alpha."), False)]), schema=DOC_SCHEMA)
    [result] = actor(batch).to_pylist()
    assert result["error_type"] == "InputError" and result["fragments"] == []
    assert f"cannot open the table at {elsewhere}" in result["error"] and "RAG_DB_URI" in result["error"]
    assert not elsewhere.parent.exists()


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` finds without the package
    with pytest.raises(RayNotInstalledError, match=r"pip install 'rag-app\[ray\]'"):
        require_ray()
