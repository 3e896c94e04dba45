"""Bounded ingest: large documents stream in embed batches, oversized input and risky prunes are refused,
and a run with nothing to do commits nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rag_app.cli import app
from rag_app.core.errors import InputError, LoaderError
from rag_app.core.settings import Settings
from rag_app.core.types import Document
from rag_app.ingest.chunking import SEGMENT_CHARS
from rag_app.ingest.pipeline import PruneRefusedError, ingest_documents, ingest_paths
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore
from tests.test_store_ingest import CATALYSTS, doc_ids, write_jsonl

runner = CliRunner()


class SpyEmbedder:
    """The real MiniLM tokenizer (chunk boundaries are real) with cheap vectors, recording every call.

    Vectors are hashed, not computed: this checks how ingest streams, not what MiniLM says.
    """

    def __init__(self, real: Embedder) -> None:
        self.real = real
        self.model_id = "test:spy"
        self.max_tokens = real.max_tokens
        self.dimension = 8
        self.embed_calls: list[int] = []
        self.longest_tokenized = 0

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        self.longest_tokenized = max(self.longest_tokenized, len(text))
        return self.real.token_spans(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.embed_calls.append(len(texts))
        rng = np.random.default_rng(len(self.embed_calls))
        rows = rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def _big_text(mb: float) -> str:
    para = (
        "Nvidia reported record data-center revenue and the stock gapped up at the open. "
        "Analysts raised targets; volume was three times the average.\n"
    )
    return para * int(mb * 1_000_000 / len(para))


def test_multi_mb_document_streams_in_embed_batches_and_commits_once(
    settings: Settings, minilm: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"embed_batch_size": 64})
    spy = SpyEmbedder(minilm)
    doc = Document(id="big", title="Big", text=_big_text(2.5), source="big.txt")
    commits: list[int] = []
    committed_batches: list[int] = []  # rows per batch as the commit pulls them from the staging file
    replace = VectorStore.replace_documents

    def streamed_replace(
        store: VectorStore, table: object, rows: object, doc_ids: list[str], *, all_new: bool = False
    ) -> None:
        assert isinstance(rows, pa.RecordBatchReader)  # a stream off disk, never the document's rows at once

        def counted() -> Iterator[pa.RecordBatch]:
            for batch in rows:
                committed_batches.append(batch.num_rows)
                yield batch

        replace(
            store, table, pa.RecordBatchReader.from_batches(rows.schema, counted()), doc_ids, all_new=all_new
        )

    monkeypatch.setattr(VectorStore, "replace_documents", streamed_replace)
    report = ingest_documents(
        settings, "paiddaily", "catalysts", [doc], embedder=spy, progress=False, on_batch=commits.append
    )
    assert report.added == 1 and report.chunks_written > 1000
    assert len(spy.embed_calls) == -(-report.chunks_written // 64)  # ceil: streamed, 64 at a time
    assert max(spy.embed_calls) == 64 and sum(spy.embed_calls) == report.chunks_written
    assert spy.longest_tokenized <= SEGMENT_CHARS < len(doc.text)  # never the whole text at once
    assert commits == [1]  # the whole document in one commit: crash-safe
    # ...yet rows are held one embed batch at a time: staged on disk, streamed into that commit
    assert max(committed_batches) <= 64 and sum(committed_batches) == report.chunks_written
    assert not any((settings.data_dir / "tmp").iterdir())  # the staging file is gone
    table = VectorStore(settings).open_table("paiddaily", "catalysts")
    assert table.count_rows() == report.chunks_written


def test_oversized_file_or_document_is_refused_and_nothing_written(
    settings: Settings, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    version = VectorStore(settings).open_table("paiddaily", "catalysts").version
    small = settings.model_copy(update={"max_document_bytes": 1000})
    big = tmp_path / "big.txt"
    big.write_text("x " * 1500)
    with pytest.raises(
        LoaderError,
        match=r"big\.txt: file is 3,000 bytes, over the limit of 1,000 bytes "
        r"\(RAG_MAX_DOCUMENT_BYTES\)",
    ):
        ingest_paths(small, "paiddaily", "catalysts", [src, big], progress=False)
    doc = Document(id="huge", title="", text="é" * 600, source="api")  # 600 chars, 1,200 bytes
    with pytest.raises(InputError, match=r"'huge' \(api\) is 1,200 bytes.*RAG_MAX_DOCUMENT_BYTES"):
        ingest_documents(small, "paiddaily", "catalysts", [doc], progress=False)
    assert VectorStore(settings).open_table("paiddaily", "catalysts").version == version
    result = runner.invoke(
        app,
        [
            "ingest",
            "--site",
            "paiddaily",
            "--collection",
            "catalysts",
            str(big),
            "--data-dir",
            str(settings.data_dir),
        ],
        env={"RAG_MAX_DOCUMENT_BYTES": "1000"},
    )
    assert result.exit_code == 3 and "over the limit of 1,000 bytes (RAG_MAX_DOCUMENT_BYTES)" in result.output


def test_prune_of_most_documents_is_refused_unless_yes_and_dry_run_writes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "cat.jsonl", CATALYSTS)
    ingest_paths(settings, "paiddaily", "catalysts", [src], progress=False)
    store = VectorStore(settings)
    version = store.open_table("paiddaily", "catalysts").version
    write_jsonl(src, CATALYSTS[:1])  # a mistaken input: 3 of 4 documents would go
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for paths in ([src], [empty_dir]):
        with pytest.raises(PruneRefusedError, match=r"would remove \d of 4 documents .*--dry-run.*--yes"):
            ingest_paths(settings, "paiddaily", "catalysts", paths, prune=True, progress=False)
    assert doc_ids(settings) == {"c1", "c2", "c3", "c4"}
    assert store.open_table("paiddaily", "catalysts").version == version

    args = ["ingest", "--site", "paiddaily", "--collection", "catalysts", str(src), "--prune"]
    args += ["--data-dir", str(settings.data_dir)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "would remove 3 of 4 documents (75%)" in refused.output
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert [ln for ln in dry.output.splitlines() if ln.startswith("would remove")] == [
        "would remove c2",
        "would remove c3",
        "would remove c4",
    ]
    assert "dry run, nothing written" in dry.output
    assert store.open_table("paiddaily", "catalysts").version == version
    forced = runner.invoke(app, [*args, "--yes"])
    assert forced.exit_code == 0 and "3 removed" in forced.output, forced.output
    assert doc_ids(settings) == {"c1"}
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0  # alias; nothing left to remove


def test_noop_reingest_commits_nothing(settings: Settings, minilm: Embedder) -> None:
    docs = [Document(id=r["id"], title=r["title"], text=r["text"], source="mem") for r in CATALYSTS]
    ingest_documents(settings, "paiddaily", "catalysts", docs, batch_docs=1, progress=False)  # 4 fragments
    store = VectorStore(settings)
    version = store.open_table("paiddaily", "catalysts").version
    again = ingest_documents(settings, "paiddaily", "catalysts", docs, progress=False)
    assert (again.unchanged, again.chunks_written, again.indexes) == (4, 0, [])
    assert store.open_table("paiddaily", "catalysts").version == version  # no compaction, no re-index


def test_empty_files_are_skipped_and_write_nothing(settings: Settings, tmp_path: Path) -> None:
    src = tmp_path / "site"
    src.mkdir()
    (src / "a.md").write_text("# A\n\nSage Team costs $19 a month.\n")
    (src / "empty.txt").write_text("")
    (src / "blank.md").write_text("\n  \n")
    first = ingest_paths(settings, "builddaily", "resources", [src], progress=False)
    assert (first.added, first.empty, first.files) == (1, 2, 3)
    assert "2 empty documents skipped" in first.summary()
    version = VectorStore(settings).open_table("builddaily", "resources").version
    again = ingest_paths(settings, "builddaily", "resources", [src], progress=False)
    assert (again.added, again.unchanged, again.empty, again.chunks_written) == (0, 1, 2, 0)
    assert VectorStore(settings).open_table("builddaily", "resources").version == version
