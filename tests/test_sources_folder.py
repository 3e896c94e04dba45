"""Folder sources: recursion, include/exclude globs, symlink loops and unreadable files (reported, not
fatal with on_error="skip"; fatal before any write with "stop"), the same ids as `rag-app ingest
FOLDER`, and prune of deleted files. Real files, real LanceDB, the real MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag_app.core.errors import LoaderError
from rag_app.core.settings import Settings, SourceSpec
from rag_app.ingest.loaders import load_paths
from rag_app.ingest.sources.base import Failure, GlobFilter, SourceItem
from rag_app.ingest.sources.folder import FolderSource
from rag_app.ingest.sync import sync_collection
from rag_app.models.embeddings import Embedder
from rag_app.store.vector_store import VectorStore
from tests.conftest import SHARED_DATA

SITE, COLLECTION = "sagedaily", "canon"
DOCS = SHARED_DATA / "fastapi_docs" / "pages"


def _tree(root: Path) -> Path:
    """A small docs folder from the shared FastAPI pages, with a hidden file and a non-document."""
    (root / "guide" / "drafts").mkdir(parents=True)
    (root / "guide" / "env.md").write_text((DOCS / "environment-variables.md").read_text())
    (root / "guide" / "drafts" / "links.md").write_text((DOCS / "external-links.md").read_text())
    (root / "management.md").write_text((DOCS / "management.md").read_text())
    (root / "notes.txt").write_text("Plain notes about FastAPI deployment and virtual environments.\n")
    (root / ".hidden.md").write_text("# hidden\nnever indexed\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def _spec(root: Path, **kw: object) -> SourceSpec:
    return SourceSpec(site=SITE, collection=COLLECTION, kind="folder", location=str(root), **kw)


def _ids(settings: Settings) -> set[str]:
    store = VectorStore(settings)
    table = store.open_table(SITE, COLLECTION)
    return set(store.doc_hashes(table)) if table is not None else set()


def test_folder_walk_matches_ingest_ids_and_globs_filter(tmp_path: Path) -> None:
    root = _tree(tmp_path / "docs")
    items = [e for e in FolderSource(root).scan({}) if isinstance(e, SourceItem)]
    names = sorted(Path(i.uri).relative_to(root).as_posix() for i in items)
    assert names == ["guide/drafts/links.md", "guide/env.md", "management.md", "notes.txt"]
    loaded = {d.source for d in load_paths([root]).documents}
    assert loaded == {i.uri for i in items}  # the same files `rag-app ingest FOLDER` reads

    only_guide = FolderSource(root, GlobFilter.of(["guide/*"], ["*/drafts/*"]))
    kept = [Path(e.uri).relative_to(root).as_posix() for e in only_guide.scan({})]
    assert kept == ["guide/env.md"]
    assert [Path(e.uri).name for e in FolderSource(root, GlobFilter.of(["*.txt"])).scan({})] == ["notes.txt"]


def test_symlink_loop_and_unreadable_file_are_reported_and_skipped(
    settings: Settings, tmp_path: Path, minilm: Embedder
) -> None:
    root = _tree(tmp_path / "docs")
    os.symlink(root, root / "guide" / "loop")  # a link back to an ancestor
    os.symlink(root / "missing.md", root / "broken.md")  # a file that cannot be read
    events = list(FolderSource(root).scan({}))
    failures = {Path(e.uri).name: e.reason for e in events if isinstance(e, Failure)}
    assert set(failures) == {"loop", "broken.md"}
    assert "symbolic link loop" in failures["loop"] and "cannot read" in failures["broken.md"]

    report = sync_collection(settings, SITE, COLLECTION, [_spec(root)], embedder=minilm, on_error="skip")
    source = report.sources[0]
    assert source.added == 4 and len(source.failed) == 2 and not report.ok
    assert _ids(settings) == {"guide/drafts/links", "guide/env", "management", "notes"}


def test_stop_on_error_writes_nothing(settings: Settings, tmp_path: Path, minilm: Embedder) -> None:
    root = _tree(tmp_path / "docs")
    (root / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n{not json\n')
    with pytest.raises(LoaderError, match=r"bad\.jsonl"):
        sync_collection(settings, SITE, COLLECTION, [_spec(root)], embedder=minilm, on_error="stop")
    assert _ids(settings) == set()
    os.symlink(root / "missing.md", root / "broken.md")
    (root / "bad.jsonl").unlink()
    with pytest.raises(LoaderError, match="--on-error skip"):
        sync_collection(settings, SITE, COLLECTION, [_spec(root)], embedder=minilm, on_error="stop")
    assert _ids(settings) == set()


def test_folder_prune_removes_deleted_files_and_unchanged_costs_nothing(
    settings: Settings, tmp_path: Path, minilm: Embedder
) -> None:
    root = _tree(tmp_path / "docs")
    first = sync_collection(settings, SITE, COLLECTION, [_spec(root, prune=True)], embedder=minilm)
    assert first.ok and first.sources[0].added == 4
    again = sync_collection(settings, SITE, COLLECTION, [_spec(root, prune=True)], embedder=minilm)
    assert again.sources[0].unchanged_documents == 4 and again.sources[0].chunks_written == 0
    (root / "notes.txt").unlink()
    (root / "management.md").write_text("# Management\n\nThe team that manages FastAPI, rewritten.\n")
    third = sync_collection(settings, SITE, COLLECTION, [_spec(root, prune=True)], embedder=minilm)
    src = third.sources[0]
    assert (src.updated, src.removed) == (1, 1) and third.removed_ids == ["notes"]
    assert _ids(settings) == {"guide/drafts/links", "guide/env", "management"}
