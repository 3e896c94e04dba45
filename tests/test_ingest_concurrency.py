"""Concurrent writers of one collection: real processes racing, the writer lock, duplicate repair.

Each test runs on local disk and on an s3:// database on the loopback moto server: the writer lock is a
local file in either case, so it serializes this host's writers of a database on object storage too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.store.locks import FileWriterLocks, WriterLockTimeout
from rag_app.store.vector_store import VectorStore
from tests.conftest import REPO_ROOT, SAMPLE_DATA, store_env, store_settings_for
from tests.test_store_ingest import CATALYSTS, doc_ids, write_jsonl

runner = CliRunner()
RESOURCES = SAMPLE_DATA / "builddaily" / "resources"

# Each racer loads the model first, then waits until both are ready, so the two ingests overlap.
RACER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from rag_app.models.embeddings import load_embedder
    from rag_app.ingest.pipeline import ingest_paths
    from rag_app.core.settings import Settings

    me, other, src = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    settings = Settings()
    load_embedder(settings)
    me.touch()
    while not other.exists():
        time.sleep(0.01)
    r = ingest_paths(settings, "builddaily", "resources", [src], progress=False)
    print(json.dumps({"added": r.added, "unchanged": r.unchanged, "chunks": r.chunks_written}))
    """
)


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    """Each test of this module on local disk, then on S3 (conftest ``store_settings``)."""
    return store_settings


def _env(raced: Settings) -> dict[str, str]:
    return {
        **os.environ,
        **store_env(raced),
        "RAG_RERANKER_ON_MISSING": "fallback",
        "RAG_LM_MODEL": "",
        "PYTHONPATH": str(REPO_ROOT),
    }


def test_two_concurrent_processes_write_each_chunk_once(
    settings: Settings, store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    raced = store_settings_for(store_kind, tmp_path / "race", request)
    ready = [tmp_path / "ready-a", tmp_path / "ready-b"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(ready[i]), str(ready[1 - i]), str(RESOURCES)],
            env=_env(raced),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    reports = sorted(
        (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs), key=lambda r: r["added"]
    )

    alone = ingest_paths(settings, "builddaily", "resources", [RESOURCES], progress=False)
    store = VectorStore(raced)
    info = store.info("builddaily", "resources")
    assert info is not None
    assert (info.rows, info.documents) == (alone.chunks_written, alone.added)
    assert info.duplicate_ids == 0 and store.duplicate_ids(store.open_table("builddaily", "resources")) == {}
    # the second writer waited, then saw the first one's commit and had nothing to do
    assert reports[0] == {"added": 0, "unchanged": alone.added, "chunks": 0}
    assert reports[1]["added"] == alone.added


def test_writer_lock_timeout_names_the_collection_and_writes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    version = VectorStore(settings).open_table("paiddaily", "catalysts").version
    write_jsonl(src, [dict(CATALYSTS[0], text="changed"), *CATALYSTS[1:]])
    impatient = settings.model_copy(update={"ingest_lock_timeout_s": 0.2})
    other_writer = FileWriterLocks(settings.data_dir / "locks", timeout_s=1.0)
    with other_writer.hold("paiddaily", "catalysts"):
        with pytest.raises(WriterLockTimeout, match=r"paiddaily/catalysts.*RAG_INGEST_LOCK_TIMEOUT_S"):
            ingest_paths(impatient, "paiddaily", "catalysts", [src], progress=False)
        # other collections are not blocked
        with FileWriterLocks(settings.data_dir / "locks", timeout_s=0.2).hold("paiddaily", "tickers"):
            pass
    assert VectorStore(settings).open_table("paiddaily", "catalysts").version == version
    report = ingest_paths(impatient, "paiddaily", "catalysts", [src], progress=False)  # free again
    assert report.updated == 1


def test_duplicates_are_reported_and_dedupe_repairs_them(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    table = VectorStore(settings).open_table("paiddaily", "catalysts")
    clean = table.to_arrow()
    table.add(pa.concat_tables([clean.slice(0, 2), clean.slice(0, 1)]))  # as a racing writer left it
    assert table.count_rows() == 7
    for key, value in store_env(settings).items():
        monkeypatch.setenv(key, value)
    args = ["--data-dir", str(settings.data_dir)]

    [info] = json.loads(runner.invoke(app, ["stats", "--json", *args]).stdout)
    assert (info["rows"], info["duplicate_ids"], info["duplicate_rows"]) == (7, 2, 3)
    text = runner.invoke(app, ["stats", *args]).output
    assert "maintain --dedupe --site paiddaily --collection catalysts" in text
    checks = {c["component"]: c for c in json.loads(runner.invoke(app, ["doctor", "--json", *args]).stdout)}
    assert checks["table paiddaily/catalysts"]["status"] == "error"
    assert "2 chunk ids stored more than once (3 extra rows)" in checks["table paiddaily/catalysts"]["detail"]

    repaired = runner.invoke(
        app, ["maintain", "--dedupe", "--site", "paiddaily", "--collection", "catalysts", "--json", *args]
    )
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout) == {"removed_rows": {"paiddaily/catalysts": 3}}
    table = VectorStore(settings).open_table("paiddaily", "catalysts")
    assert table.count_rows() == 4 and doc_ids(settings) == {"c1", "c2", "c3", "c4"}
    assert sorted(table.to_arrow()["id"].to_pylist()) == sorted(clean["id"].to_pylist())
    checks = {c["component"]: c for c in json.loads(runner.invoke(app, ["doctor", "--json", *args]).stdout)}
    assert checks["table paiddaily/catalysts"]["status"] == "ok"
    again = runner.invoke(app, ["maintain", "--dedupe", *args])  # every collection; nothing left to do
    assert again.exit_code == 0 and "paiddaily/catalysts: 0 duplicate rows removed" in again.output
    assert runner.invoke(app, ["maintain", "--collection", "catalysts", *args]).exit_code == 2  # no --site
